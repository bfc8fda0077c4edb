//! The key/value cache of a batch of sequences, with per-position validity.
//!
//! Positions are stored per row; a position may be invalid (left padding, or a
//! row that had nothing to add at a step), so rows of different lengths share
//! one rectangular cache. Forking duplicates rows (one prompt → many samples),
//! truncation drops the tail (rewind to a prefix). The cache owns no weights.
//!
//! Room can be reserved ahead ([`KvCache::reserve`]): later appends then write
//! in place (one copy per tensor) instead of concatenating into new tensors, and
//! attention reads a view of the filled part. The reserved keys and values of
//! a layer are the two halves of one buffer, so the fused decode path writes
//! both with one op. Gradient-tracked keys/values always take the
//! concatenating path.

use candle_core::Tensor;

use crate::Result;

pub struct KvCache {
    /// Per layer: keys and values, [B, n_kv_heads, S', head_dim], S' ≥ S: the
    /// first S positions are filled, the rest is reserved room.
    pub(crate) layers: Vec<Option<(Tensor, Tensor)>>,
    /// Per layer, when [`KvCache::reserve`] made room: one buffer
    /// [2, B, n_kv_heads, S', head_dim] whose halves are `layers`' keys and
    /// values (the fused decode path writes both with one kernel).
    room: Vec<Option<Tensor>>,
    /// `valid[b][s]`: position `s` of row `b` holds a real token.
    pub(crate) valid: Vec<Vec<bool>>,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        KvCache { layers: vec![None; num_layers], room: vec![None; num_layers], valid: Vec::new() }
    }

    /// Rows in the cache (0 before the first forward pass).
    pub fn batch_size(&self) -> usize {
        self.valid.len()
    }

    /// Cached positions per row (including invalid ones).
    pub fn len(&self) -> usize {
        self.valid.first().map_or(0, |v| v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of real tokens in each row: the next token's position id.
    pub fn next_positions(&self) -> Vec<usize> {
        self.valid.iter().map(|r| r.iter().filter(|&&v| v).count()).collect()
    }

    /// A cache whose row `i` is a copy of row `rows[i]` of this one.
    pub fn select(&self, rows: &[usize]) -> Result<KvCache> {
        if self.is_empty() {
            return Ok(KvCache { layers: self.layers.clone(), room: vec![None; self.layers.len()], valid: rows.iter().map(|_| Vec::new()).collect() });
        }
        let idx = Tensor::new(rows.iter().map(|&r| r as u32).collect::<Vec<_>>(), self.device())?;
        let layers = self
            .layers
            .iter()
            .map(|l| match l {
                Some((k, v)) => Ok(Some((k.index_select(&idx, 0)?, v.index_select(&idx, 0)?))),
                None => Ok(None),
            })
            .collect::<Result<Vec<_>>>()?;
        let valid = rows.iter().map(|&r| self.valid[r].clone()).collect();
        Ok(KvCache { room: vec![None; layers.len()], layers, valid })
    }

    /// Each row repeated `n` times in a row (`[a, b]` → `[a, a, b, b]` for n = 2).
    pub fn repeat_rows(&self, n: usize) -> Result<KvCache> {
        let rows: Vec<usize> = (0..self.batch_size()).flat_map(|r| std::iter::repeat_n(r, n)).collect();
        self.select(&rows)
    }

    /// Keeps the first `len` positions (the rest becomes room for appends).
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        if len >= self.len() {
            return Ok(());
        }
        for r in &mut self.valid {
            r.truncate(len);
        }
        Ok(())
    }

    /// Makes room for `extra` more positions per layer, so appends write in place.
    pub fn reserve(&mut self, extra: usize) -> Result<()> {
        let len = self.len();
        for (l, room) in self.layers.iter_mut().zip(&mut self.room) {
            let Some((k, v)) = l else { continue };
            if k.dim(2)? >= len + extra || k.track_op() || v.track_op() {
                continue;
            }
            let mut shape = vec![2];
            shape.extend_from_slice(k.dims());
            shape[3] = len + extra;
            let buf = Tensor::zeros(shape, k.dtype(), k.device())?;
            let (kb, vb) = (buf.get(0)?, buf.get(1)?);
            kb.slice_set(&k.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
            vb.slice_set(&v.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
            *l = Some((kb, vb));
            *room = Some(buf);
        }
        Ok(())
    }

    /// Hides every position at or after `ends[r]` in row `r` (the keys stay in
    /// memory but are masked out, and later tokens get positions as if the row
    /// ended there): one cache then holds several prefixes of a sequence.
    pub fn mask_after(&mut self, ends: &[usize]) -> Result<()> {
        if ends.len() != self.batch_size() {
            return Err(crate::Error::invalid("ends", format!("{} ends for {} rows", ends.len(), self.batch_size())));
        }
        for (row, &end) in self.valid.iter_mut().zip(ends) {
            for v in row.iter_mut().skip(end) {
                *v = false;
            }
        }
        Ok(())
    }

    /// Drops gradient tracking from the cached tensors.
    pub fn detach(&mut self) {
        for l in self.layers.iter_mut().flatten() {
            *l = (l.0.detach(), l.1.detach());
        }
    }

    fn device(&self) -> &candle_core::Device {
        self.layers.iter().flatten().next().map(|(k, _)| k.device()).unwrap_or(&candle_core::Device::Cpu)
    }

    /// The layer's key/value buffer [2, B, KV, S', hd] when `t` more positions
    /// fit in its reserved room: the fused decode path writes into it in place.
    pub(crate) fn room(&self, layer: usize, t: usize) -> Option<&Tensor> {
        let buf = self.room.get(layer)?.as_ref()?;
        (self.len() + t <= buf.dim(3).ok()?).then_some(buf)
    }

    /// Appends one layer's new keys/values after the filled positions (the
    /// caller extends `valid` afterwards); returns the filled keys/values.
    pub(crate) fn append(&mut self, layer: usize, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor)> {
        let len = self.len();
        let t = k.dim(2)?;
        let kv = match self.layers[layer].take() {
            Some((kb, vb)) if len + t <= kb.dim(2)? && !(k.track_op() || v.track_op() || kb.track_op() || vb.track_op()) => {
                // In place, into reserved room.
                kb.slice_set(&k.contiguous()?, 2, len)?;
                vb.slice_set(&v.contiguous()?, 2, len)?;
                self.layers[layer] = Some((kb.clone(), vb.clone()));
                return Ok((kb.narrow(2, 0, len + t)?, vb.narrow(2, 0, len + t)?));
            }
            Some((k0, v0)) => {
                let (k0, v0) = (k0.narrow(2, 0, len)?, v0.narrow(2, 0, len)?);
                (Tensor::cat(&[&k0, &k], 2)?, Tensor::cat(&[&v0, &v], 2)?)
            }
            None => (k, v),
        };
        self.room[layer] = None;
        self.layers[layer] = Some(kv.clone());
        Ok(kv)
    }
}
