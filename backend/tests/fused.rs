//! The fused inference ops (`model::fused`) against the composed candle ops they
//! replace: op by op on random inputs (f32 and bf16, GQA, strided caches,
//! masked positions), and whole decodes of a tiny model with the fused path on
//! and off. Runs on `AMORTIZE_TEST_DEVICE` (the GPU script sets `cuda`), so the
//! same checks cover the CPU bodies here and the CUDA kernels there.

use amortize::decode::{self, SampleConfig};
use amortize::model::fused::{add_rms_norm, attend, block_diag, cache_write, cache_write_at, silu_mul};
use amortize::model::tiny::write_tiny_model;
use amortize::model::LanguageModel;
use candle_core::{DType, Device, Tensor, D};
use rand::{Rng, SeedableRng};

fn dev() -> Device {
    match std::env::var("AMORTIZE_TEST_DEVICE").as_deref() {
        Ok("cuda") => amortize::model::parse_device("cuda").expect("AMORTIZE_TEST_DEVICE=cuda but no CUDA device"),
        _ => Device::Cpu,
    }
}

fn random(dims: &[usize], seed: u64) -> Tensor {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n = dims.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    Tensor::from_vec(v, dims, &dev()).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    let d = (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap()).unwrap();
    d.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

/// x·cos + rotate_half(x)·sin, x: [B, T, heads, hd], cs: [B, T, hd] (cos | sin).
fn rope_reference(x: &Tensor, cs: &Tensor) -> Tensor {
    let hd = x.dim(D::Minus1).unwrap();
    let (cos, sin) = (cs.narrow(2, 0, hd / 2).unwrap(), cs.narrow(2, hd / 2, hd / 2).unwrap());
    let full = |t: &Tensor| Tensor::cat(&[t, t], D::Minus1).unwrap().unsqueeze(2).unwrap();
    let (a, b) = (x.narrow(D::Minus1, 0, hd / 2).unwrap(), x.narrow(D::Minus1, hd / 2, hd / 2).unwrap());
    let rot = Tensor::cat(&[&b.neg().unwrap(), &a], D::Minus1).unwrap();
    (x.broadcast_mul(&full(&cos)).unwrap() + rot.broadcast_mul(&full(&sin)).unwrap()).unwrap()
}

const NH: usize = 4;
const NKV: usize = 2;
const HD: usize = 8;
const CAP: usize = 12;

/// Head counts, head size and cache room of an attention case.
#[derive(Clone, Copy)]
struct Geo {
    nh: usize,
    nkv: usize,
    hd: usize,
    cap: usize,
}

const SMALL: Geo = Geo { nh: NH, nkv: NKV, hd: HD, cap: CAP };
/// SmolLM2-135M's heads, with more cached positions than a block has threads
/// (the CUDA kernel's strided loops then take several turns).
const REAL: Geo = Geo { nh: 9, nkv: 3, hd: 64, cap: 320 };

/// One decode-like call: B rows, `t` new tokens after `len` cached positions.
/// Returns the fused output and cache, and the composed reference of both.
fn attention_case(g: Geo, dtype: DType, t: usize, len: usize, seed: u64) -> [(Tensor, Tensor); 2] {
    let Geo { nh, nkv, hd, cap } = g;
    let b = 3;
    let width = (nh + 2 * nkv) * hd;
    let s = len + t;
    let qkv = random(&[b, t, width], seed).to_dtype(dtype).unwrap();
    // Real rotary tables (angles of positions 5.., one row per token).
    let angles: Vec<f32> = (0..b * t).flat_map(|i| (0..hd / 2).map(move |j| (5 + i) as f32 / 10f32.powf(j as f32 / 2.0))).collect();
    let ang = Tensor::from_vec(angles, (b, t, hd / 2), &dev()).unwrap();
    let cs = Tensor::cat(&[ang.cos().unwrap(), ang.sin().unwrap()], 2).unwrap();
    let scale = 1.0 / (hd as f64).sqrt();
    let cs_q = (&cs * scale).unwrap();
    let (cs, cs_q) = (cs.to_dtype(dtype).unwrap(), cs_q.to_dtype(dtype).unwrap());
    // The buffer [2, B, KV, cap, hd] (keys, values) with `len` filled positions.
    let kv = random(&[2, b, nkv, cap, hd], seed + 1).to_dtype(dtype).unwrap();
    let (k0, v0) = (kv.get(0).unwrap().copy().unwrap(), kv.get(1).unwrap().copy().unwrap());
    // Row 0 sees everything, row 1 has two padded (masked) cached positions,
    // row 2 sees only the new tokens; causal inside the new tokens.
    let mut mask = vec![0f32; b * t * s];
    for r in 0..b {
        for q in 0..t {
            for k in 0..s {
                let hidden = (r == 1 && k < 2) || (r == 2 && k < len) || (k >= len && k - len > q);
                if hidden {
                    mask[(r * t + q) * s + k] = -1e9;
                }
            }
        }
    }
    let mask = Tensor::from_vec(mask, (b, t, s), &dev()).unwrap();

    cache_write(&kv, &qkv, &cs, len).unwrap();
    let y = attend(&qkv, &cs_q, &kv, s, &mask, nh).unwrap();

    // The composed reference, in f32.
    let f = |x: &Tensor| x.to_dtype(DType::F32).unwrap();
    let heads = f(&qkv).reshape((b, t, nh + 2 * nkv, hd)).unwrap();
    let q = rope_reference(&heads.narrow(2, 0, nh).unwrap(), &f(&cs_q)); // [B, T, H, hd]
    let kn = rope_reference(&heads.narrow(2, nh, nkv).unwrap(), &f(&cs)).transpose(1, 2).unwrap();
    let vn = heads.narrow(2, nh + nkv, nkv).unwrap().transpose(1, 2).unwrap();
    let kref = Tensor::cat(&[&f(&k0).narrow(2, 0, len).unwrap(), &kn, &f(&k0).narrow(2, s, cap - s).unwrap()], 2).unwrap();
    let vref = Tensor::cat(&[&f(&v0).narrow(2, 0, len).unwrap(), &vn, &f(&v0).narrow(2, s, cap - s).unwrap()], 2).unwrap();
    let rep = nh / nkv;
    let kx = kref.narrow(2, 0, s).unwrap().repeat_interleave_heads(rep);
    let vx = vref.narrow(2, 0, s).unwrap().repeat_interleave_heads(rep);
    let q = q.transpose(1, 2).unwrap().contiguous().unwrap(); // [B, H, T, hd]
    let scores = q.matmul(&kx.t().unwrap()).unwrap().broadcast_add(&mask.unsqueeze(1).unwrap()).unwrap();
    let p = candle_nn::ops::softmax_last_dim(&scores).unwrap();
    let yref = p.matmul(&vx).unwrap().transpose(1, 2).unwrap().reshape((b, t, nh * hd)).unwrap();
    [(y, kv), (yref, Tensor::stack(&[&kref, &vref], 0).unwrap())]
}

trait RepeatHeads {
    fn repeat_interleave_heads(&self, rep: usize) -> Tensor;
}

impl RepeatHeads for Tensor {
    /// [B, KV, S, hd] → [B, KV·rep, S, hd], head h reading kv head h / rep.
    fn repeat_interleave_heads(&self, rep: usize) -> Tensor {
        let (b, kv, s, hd) = self.dims4().unwrap();
        self.unsqueeze(2).unwrap().broadcast_as((b, kv, rep, s, hd)).unwrap().reshape((b, kv * rep, s, hd)).unwrap()
    }
}

#[test]
fn cache_write_and_attend_equal_the_composed_ops() {
    for (g, t, len) in [(SMALL, 1, 5), (SMALL, 3, 4), (SMALL, 1, 0), (REAL, 1, 300), (REAL, 3, 250)] {
        let [(y, cache), (yref, cref)] = attention_case(g, DType::F32, t, len, 10 + t as u64);
        assert!(max_abs_diff(&y, &yref) < 1e-5, "f32 t={t} len={len}: attention differs by {}", max_abs_diff(&y, &yref));
        assert!(max_abs_diff(&cache, &cref) < 1e-6, "f32 t={t} len={len}: cache differs");
        // bf16: one rounding of the output (and of each cached value) apart.
        let [(y, cache), (yref, cref)] = attention_case(g, DType::BF16, t, len, 20 + t as u64);
        assert!(max_abs_diff(&y, &yref) < 2e-2, "bf16 t={t}: attention differs by {}", max_abs_diff(&y, &yref));
        assert!(max_abs_diff(&cache, &cref) < 2e-2, "bf16 t={t}: cache differs");
    }
}

/// scale · blockdiag(B's), with an absent member's rows zero, against the
/// zeros-and-cats composition.
#[test]
fn block_diag_equals_the_composed_ops() {
    let (b0, b2) = (random(&[3, 2], 1), random(&[4, 2], 2));
    let z = |r: usize, c: usize| Tensor::zeros((r, c), DType::F32, &dev()).unwrap();
    let reference = Tensor::cat(
        &[
            Tensor::cat(&[&b0, &z(3, 2)], 1).unwrap(),
            z(5, 4), // the absent member: 5 outputs, no rank
            Tensor::cat(&[&z(4, 2), &b2], 1).unwrap(),
        ],
        0,
    )
    .unwrap();
    let reference = (reference * 0.5).unwrap();
    let got = block_diag(&[Some(&b0), None, Some(&b2)], &[3, 5, 4], 0.5).unwrap();
    assert_eq!(got.dims(), [12, 4]);
    assert!(max_abs_diff(&got, &reference) == 0.0);
    let lone = block_diag(&[None, Some(&b2)], &[3, 4], 2.0).unwrap();
    assert!(max_abs_diff(&lone, &Tensor::cat(&[&z(3, 2), &(&b2 * 2.0).unwrap()], 0).unwrap()) == 0.0);
}

/// split_heads against the transpose, split copies and candle's RoPE; its
/// backward against autograd through the same composition.
#[test]
fn split_heads_and_its_backward_equal_the_composed_ops() {
    split_heads_case(SMALL);
    split_heads_case(REAL);
}

fn split_heads_case(g: Geo) {
    use amortize::model::fused_heads::{merge_heads_backward, split_heads};
    let Geo { nh, nkv, hd, .. } = g;
    let (b, t) = (2, 3);
    let width = (nh + 2 * nkv) * hd;
    let qkv = random(&[b * t, width], 40);
    let ang = random(&[b, t, hd / 2], 41);
    let cs = Tensor::cat(&[ang.cos().unwrap(), ang.sin().unwrap()], 2).unwrap();
    let cs_q = (&cs * 0.5).unwrap();
    // Differentiable RoPE on [B, heads, T, hd] (candle's fused one has no backward).
    let rope = |x: &Tensor, c: &Tensor| {
        let (cos, sin) = (c.narrow(2, 0, hd / 2).unwrap(), c.narrow(2, hd / 2, hd / 2).unwrap());
        let full = |t: &Tensor| Tensor::cat(&[t, t], 2).unwrap().unsqueeze(1).unwrap();
        let (lo, hi) = (x.narrow(3, 0, hd / 2).unwrap(), x.narrow(3, hd / 2, hd / 2).unwrap());
        let rot = Tensor::cat(&[&hi.neg().unwrap(), &lo], 3).unwrap();
        (x.broadcast_mul(&full(&cos)).unwrap() + rot.broadcast_mul(&full(&sin)).unwrap()).unwrap()
    };
    let composed = |x: &Tensor| {
        let heads = x.reshape((b, t, nh + 2 * nkv, hd)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap();
        let q = rope(&heads.narrow(1, 0, nh).unwrap().contiguous().unwrap(), &cs_q);
        let k = rope(&heads.narrow(1, nh, nkv).unwrap().contiguous().unwrap(), &cs);
        (q, k, heads.narrow(1, nh + nkv, nkv).unwrap().contiguous().unwrap())
    };
    let (q, k, v) = split_heads(&qkv, &cs, &cs_q, (b, t), (nh, nkv)).unwrap();
    let (qr, kr, vr) = composed(&qkv);
    assert!(max_abs_diff(&q, &qr) < 1e-6 && max_abs_diff(&k, &kr) < 1e-6 && max_abs_diff(&v, &vr) == 0.0);
    let bf = |x: &Tensor| x.to_dtype(DType::BF16).unwrap();
    let (qb, kb, _) = split_heads(&bf(&qkv), &bf(&cs), &bf(&cs_q), (b, t), (nh, nkv)).unwrap();
    assert!(max_abs_diff(&qb, &qr) < 2e-2 && max_abs_diff(&kb, &kr) < 2e-2);

    // Backward: weights on every output element, gradient of their sum.
    let (wq, wk, wv) = (random(q.dims(), 42), random(k.dims(), 43), random(v.dims(), 44));
    let var = candle_core::Var::from_tensor(&qkv).unwrap();
    let (q, k, v) = composed(var.as_tensor());
    let loss = ((q * &wq).unwrap().sum_all().unwrap() + (k * &wk).unwrap().sum_all().unwrap() + (v * &wv).unwrap().sum_all().unwrap()).unwrap();
    let reference = loss.backward().unwrap().get(var.as_tensor()).unwrap().clone();
    let got = merge_heads_backward(&wq, &wk, &wv, &cs, &cs_q).unwrap();
    assert_eq!(got.dims(), [b * t, width]);
    assert!(max_abs_diff(&got, &reference) < 1e-5, "merge backward differs by {}", max_abs_diff(&got, &reference));
    assert!(split_heads(&qkv, &cs, &cs_q, (b, t + 1), (nh, nkv)).is_err());
    assert!(merge_heads_backward(&wq, &wk, &wv.narrow(3, 0, 4).unwrap(), &cs, &cs_q).is_err());
}

#[test]
fn silu_mul_equals_the_composed_ops() {
    let x = random(&[2, 3, 10], 3);
    let reference = (x.narrow(2, 0, 5).unwrap().silu().unwrap() * x.narrow(2, 5, 5).unwrap()).unwrap();
    assert_eq!(silu_mul(&x).unwrap().dims(), [2, 3, 5]);
    assert!(max_abs_diff(&silu_mul(&x).unwrap(), &reference) < 1e-6);
    let xb = x.to_dtype(DType::BF16).unwrap();
    assert!(max_abs_diff(&silu_mul(&xb).unwrap(), &reference) < 2e-2);
}

/// The cache write at a position held on the device (what a replayed CUDA
/// graph uses) equals the write at a host position; a position past the
/// room writes nothing; a position tensor of the wrong kind is an error.
#[test]
fn cache_write_at_a_device_position_equals_the_host_one() {
    let qkv = random(&[2, 1, (NH + 2 * NKV) * HD], 1);
    let cs = random(&[2, 1, HD], 2);
    let before = random(&[2, 2, NKV, CAP, HD], 3);
    let at = |p: u32| Tensor::new(&[p], &dev()).unwrap();
    for p in [0, 5, CAP - 1] {
        let (host, device) = (before.copy().unwrap(), before.copy().unwrap());
        cache_write(&host, &qkv, &cs, p).unwrap();
        cache_write_at(&device, &qkv, &cs, &at(p as u32)).unwrap();
        assert_eq!(max_abs_diff(&host, &device), 0.0, "position {p}");
        assert!(max_abs_diff(&host, &before) > 0.0);
    }
    for p in [CAP as u32, u32::MAX] {
        let device = before.copy().unwrap();
        cache_write_at(&device, &qkv, &cs, &at(p)).unwrap();
        assert_eq!(max_abs_diff(&device, &before), 0.0, "position {p} is past the room");
    }
    assert!(cache_write_at(&before, &qkv, &cs, &Tensor::new(&[1f32], &dev()).unwrap()).is_err(), "a float position");
    assert!(cache_write_at(&before, &qkv, &cs, &Tensor::new(&[1u32, 2], &dev()).unwrap()).is_err(), "two positions");
}

#[test]
fn bad_shapes_are_errors() {
    let qkv = random(&[1, 1, (NH + 2 * NKV) * HD], 1);
    let cs = random(&[1, 1, HD], 2);
    let buf = random(&[2, 1, NKV, 4, HD], 3);
    assert!(cache_write(&buf, &qkv, &cs, 4).is_err(), "a write past the reserved room");
    assert!(cache_write(&buf, &qkv.narrow(2, 0, 3 * HD).unwrap(), &cs, 0).is_err(), "fewer heads than keys and values");
    assert!(cache_write(&buf.get(0).unwrap(), &qkv, &cs, 0).is_err(), "keys without values");
    let mask = Tensor::zeros((1, 1, 3), DType::F32, &dev()).unwrap();
    assert!(attend(&qkv, &cs, &buf, 2, &mask, NH).is_err(), "a mask of the wrong length");
    assert!(attend(&qkv, &cs, &buf, 5, &Tensor::zeros((1, 1, 5), DType::F32, &dev()).unwrap(), NH).is_err(), "past the buffer");
    assert!(attend(&qkv, &cs, &buf, 2, &mask.narrow(2, 0, 2).unwrap(), 3).is_err(), "heads not a multiple of kv heads");
    assert!(block_diag(&[None, None], &[3, 4], 1.0).is_err(), "no member");
    assert!(block_diag(&[Some(&random(&[3, 2], 5))], &[4], 1.0).is_err(), "rows not the member's outputs");
    assert!(silu_mul(&random(&[2, 3], 4)).is_err(), "an odd width");
    assert!(add_rms_norm(&qkv, &qkv, &cs.flatten_all().unwrap(), 1e-5).is_err(), "a norm weight of the wrong size");
}

/// Several hidden sizes: one warp, several, and more values than threads (the
/// CUDA kernel's block has at most 1,024).
#[test]
fn add_rms_norm_equals_the_composed_ops() {
    for h in [40, 576, 2560] {
        add_rms_norm_case(h);
    }
}

fn add_rms_norm_case(h: usize) {
    let (x, a, w) = (random(&[2, 3, h], 5), random(&[2, 3, h], 6), random(&[h], 7));
    let sum = (&x + &a).unwrap();
    let norm = candle_nn::ops::rms_norm(&sum, &w, 1e-5).unwrap();
    let (s, n) = add_rms_norm(&x, &a, &w, 1e-5).unwrap();
    assert_eq!(s.dims(), [2, 3, h]);
    assert!(max_abs_diff(&s, &sum) < 1e-6 && max_abs_diff(&n, &norm) < 1e-5);
    let bf = |t: &Tensor| t.to_dtype(DType::BF16).unwrap();
    let (s, n) = add_rms_norm(&bf(&x), &bf(&a), &bf(&w), 1e-5).unwrap();
    assert!(max_abs_diff(&s, &sum) < 2e-2 && max_abs_diff(&n, &norm) < 5e-2);
}

/// The taped pass's fused backward steps against autograd through the composed
/// forward (f32), and in bf16 within its rounding. (`engine.rs` checks them
/// inside whole taped passes.)
#[test]
fn fused_backward_steps_equal_autograd() {
    for h in [24, 576, 2560] {
        fused_backward_case(h);
    }
}

fn fused_backward_case(h: usize) {
    use amortize::model::fused_grad::{rms_norm_backward, swiglu_backward};
    let (x, w, dy, acc) = (random(&[5, h], 8), random(&[h], 9), random(&[5, h], 10), random(&[5, h], 11));
    let xv = candle_core::Var::from_tensor(&x).unwrap();
    let y = candle_nn::ops::rms_norm_slow(xv.as_tensor(), &w, 1e-5).unwrap();
    let g = (&y * &dy).unwrap().sum_all().unwrap().backward().unwrap();
    let reference = (g.get(xv.as_tensor()).unwrap() + &acc).unwrap();
    let fused = rms_norm_backward(&x, &w, &dy, 1e-5, Some(&acc)).unwrap();
    assert!(max_abs_diff(&fused, &reference) < 1e-5, "rms-norm backward differs by {}", max_abs_diff(&fused, &reference));
    let bf = |t: &Tensor| t.to_dtype(DType::BF16).unwrap();
    let fused = rms_norm_backward(&bf(&x), &bf(&w), &bf(&dy), 1e-5, Some(&bf(&acc))).unwrap();
    assert!(max_abs_diff(&fused, &reference) < 0.1, "bf16: {}", max_abs_diff(&fused, &reference));

    let (gu, d) = (random(&[5, 16], 12), random(&[5, 8], 13));
    let gv = candle_core::Var::from_tensor(&gu).unwrap();
    let act = (gv.as_tensor().narrow(1, 0, 8).unwrap().silu().unwrap() * gv.as_tensor().narrow(1, 8, 8).unwrap()).unwrap();
    let g = (&act * &d).unwrap().sum_all().unwrap().backward().unwrap();
    let reference = g.get(gv.as_tensor()).unwrap();
    assert!(max_abs_diff(&swiglu_backward(&gu, &d).unwrap(), reference) < 1e-6);
    assert!(max_abs_diff(&swiglu_backward(&bf(&gu), &bf(&d)).unwrap(), reference) < 2e-2);
    assert!(swiglu_backward(&gu, &d.narrow(1, 0, 7).unwrap()).is_err());
    assert!(rms_norm_backward(&x, &w.narrow(0, 0, 20).unwrap(), &dy, 1e-5, None).is_err());
    assert!(rms_norm_backward(&x, &w, &dy, 1e-5, None).is_ok());
}

/// AdamW's fused step (one pass for the norm, one for the update) follows the
/// composed one over several clipped steps, with a parameter that has no
/// gradient (it and its moments stay put) and parameters of several shapes.
#[test]
fn fused_adamw_follows_the_composed_one() {
    use amortize::gfn::optim::{AdamW, AdamWConfig};
    // The last is larger than a kernel block's share (several blocks, several turns).
    let shapes: [&[usize]; 5] = [&[3, 5], &[7], &[2, 2, 2], &[11, 3], &[600, 700]];
    let make = |fused: bool| {
        let vars: Vec<candle_core::Var> = shapes.iter().enumerate().map(|(i, s)| candle_core::Var::from_tensor(&random(s, 30 + i as u64)).unwrap()).collect();
        let mut opt = AdamW::new(vars, AdamWConfig { weight_decay: 0.1, ..Default::default() }).unwrap();
        opt.fused = fused;
        opt
    };
    let (mut a, mut b) = (make(false), make(true));
    for step in 0..4u64 {
        let grads: Vec<Option<Tensor>> = shapes.iter().enumerate().map(|(i, s)| (i != 2).then(|| (random(s, 100 * step + i as u64) * 3.0).unwrap())).collect();
        let (na, nb) = (a.step_clipped(&grads, 0.05, 1.0).unwrap(), b.step_clipped(&grads, 0.05, 1.0).unwrap());
        assert!((na - nb).abs() <= 1e-5 * na, "step {step}: norms {na} vs {nb}");
        assert!(na > 1.0, "the clip must act");
    }
    for (i, (pa, pb)) in a.params().iter().zip(b.params()).enumerate() {
        let d = max_abs_diff(pa.as_tensor(), pb.as_tensor());
        assert!(d < 1e-5, "parameter {i} differs by {d}");
    }
    assert_eq!(max_abs_diff(a.params()[2].as_tensor(), &random(shapes[2], 32)), 0.0, "no gradient: unchanged");
}

fn tiny(dir: &tempfile::TempDir, dtype: DType) -> LanguageModel {
    let paths = write_tiny_model(dir.path(), 7).unwrap();
    LanguageModel::load(&paths.gguf, &dev(), dtype).unwrap()
}

/// A whole seeded sampling run (prompts of different lengths: left padding,
/// reserved cache, one token a step) is the same with the fused path on and off.
#[test]
fn fused_decoding_equals_composed_decoding() {
    let dir = tempfile::tempdir().unwrap();
    let mut lm = tiny(&dir, DType::F32);
    let prompts = vec![lm.tokenizer.encode("the cat sat").unwrap(), lm.tokenizer.encode("12 + 3 =").unwrap(), lm.tokenizer.encode("a").unwrap()];
    let cfg = SampleConfig { n: 2, max_new_tokens: 16, temperature: 1.0, seed: 5, ..Default::default() };
    let mut runs = Vec::new();
    for on in [false, true] {
        lm.llama.set_fused(on);
        runs.push(decode::sample(&lm, &prompts, &cfg, None, None).unwrap());
    }
    let (off, on) = (&runs[0], &runs[1]);
    assert!(on.iter().map(|s| s.tokens.len()).sum::<usize>() > 12, "too short to test decoding");
    for (a, b) in off.iter().zip(on) {
        assert_eq!(a.tokens, b.tokens);
        for (x, y) in a.logprobs.iter().zip(&b.logprobs) {
            assert!((x - y).abs() < 1e-4, "composed {x} vs fused {y}");
        }
    }
}

/// Token by token into reserved room, the fused path gives the full pass's
/// logits in f32. In bf16 it is no further from the f32 model than the composed
/// path is (it rounds once per op where the composed path rounds at every step).
#[test]
fn fused_incremental_logits_equal_the_full_pass() {
    let dir = tempfile::tempdir().unwrap();
    let text = "the cat and the hat sat on the mat";
    let incremental = |lm: &mut LanguageModel, fused: bool| {
        let ids = lm.tokenizer.encode(text).unwrap();
        lm.llama.set_fused(fused);
        let mut cache = lm.llama.new_cache();
        lm.llama.forward(&[ids[..3].to_vec()], &mut cache, None).unwrap();
        cache.reserve(ids.len()).unwrap();
        let mut parts = Vec::new();
        for &id in &ids[3..] {
            parts.push(lm.llama.logits(&lm.llama.forward(&[vec![id]], &mut cache, None).unwrap()).unwrap());
        }
        Tensor::cat(&parts, 1).unwrap().squeeze(0).unwrap()
    };
    let mut lm = tiny(&dir, DType::F32);
    let ids = lm.tokenizer.encode(text).unwrap();
    lm.llama.set_fused(false);
    let full = lm.llama.logits(&lm.llama.forward(std::slice::from_ref(&ids), &mut lm.llama.new_cache(), None).unwrap()).unwrap().squeeze(0).unwrap();
    let full = full.narrow(0, 3, ids.len() - 3).unwrap();
    let d = max_abs_diff(&full, &incremental(&mut lm, true));
    assert!(d < 5e-5, "f32: fused incremental logits differ by {d}");

    let mut lm = tiny(&dir, DType::BF16);
    let (composed, fused) = (max_abs_diff(&full, &incremental(&mut lm, false)), max_abs_diff(&full, &incremental(&mut lm, true)));
    eprintln!("bf16 token by token vs the f32 full pass: composed {composed}, fused {fused}");
    assert!(fused <= 1.5 * composed + 0.05, "bf16: fused {fused} vs composed {composed} from the f32 logits");
}

/// The fused draw (`DeviceDraw::with_fused`) picks the composed ops' tokens with
/// their log-probabilities, at SmolLM2's vocabulary size, with and without the
/// mask bias and the stop mask, at three temperatures and greedy.
#[test]
fn fused_draw_picks_what_the_composed_ops_pick() {
    use amortize::decode::draw::DeviceDraw;
    let (b, v) = (6, 49_152);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let bias: Vec<f32> = (0..v).map(|i| if i % 7 == 0 { -99.0 } else { 0.0 }).collect();
    for (masked, below_min, temperature, greedy) in [(false, false, 1.0, false), (true, true, 0.7, false), (true, false, 1.3, false), (false, true, 1.0, true), (true, false, 1.0, true)] {
        let draws = [false, true].map(|fused| DeviceDraw::new(v, masked.then_some(&bias[..]), &[2, 5, 9], &dev()).unwrap().with_fused(fused));
        for round in 0..3 {
            let logits = (random(&[b, v], 100 + round) * 6.0).unwrap();
            let u: Vec<f32> = (0..b * v).map(|_| rng.random::<f32>()).collect();
            let u = Tensor::from_vec(u, (b, v), &dev()).unwrap();
            let [composed, fused] = [&draws[0], &draws[1]].map(|d| d.choose(&logits, below_min, temperature, greedy, Some(&u)).unwrap());
            for (c, f) in composed.iter().zip(&fused) {
                let case = format!("masked {masked}, below_min {below_min}, T {temperature}, greedy {greedy}: {c:?} vs {f:?}");
                assert_eq!(c.token, f.token, "{case}");
                assert!((c.logprob - f.logprob).abs() < 1e-4 && (c.sample_logprob - f.sample_logprob).abs() < 1e-4, "{case}");
                if below_min {
                    assert!(![2, 5, 9].contains(&f.token), "{case}: a stop token below the minimum length");
                }
            }
        }
    }
    // Bad inputs are errors: no noise for a draw, noise of the wrong shape.
    let d = DeviceDraw::new(v, None, &[], &dev()).unwrap().with_fused(true);
    let logits = random(&[2, v], 1);
    assert!(d.choose(&logits, false, 1.0, false, None).is_err());
    assert!(d.choose(&logits, false, 1.0, false, Some(&random(&[2, 3], 2))).is_err());
}

/// The reward's log-probabilities through the fused op (`logprobs_at`) equal
/// the composed log-softmax's: the prefix-shared reward of a few trajectories
/// (policy tokens under the mask bias, a tool token, Y after every prefix) with
/// the fused ops off and on.
#[test]
fn fused_reward_logprobs_equal_the_composed_ones() {
    use amortize::gfn::{LmReward, Problem, Reward, Trajectory};
    let dir = tempfile::tempdir().unwrap();
    let mut lm = tiny(&dir, DType::F32);
    let enc = |s: &str| lm.tokenizer.encode(s).unwrap();
    let trajs = vec![
        Trajectory::from_actions(enc(" 3 + 4")),
        Trajectory::from_actions(vec![]),
        Trajectory { tokens: [enc(" 3 + 4 ="), enc(" 7")].concat(), tool: [vec![false; enc(" 3 + 4 =").len()], vec![true; enc(" 7").len()]].concat() },
    ];
    let problem = Problem { key: "k".into(), policy_prompt: enc("Q"), reward_context: enc("Question: 3 + 4 - 1 ="), reward_suffix: enc(" The answer is 6."), seeds: vec![] };
    let mask = decode::TokenMask::Forbid(enc("x+"));
    let mut got = Vec::new();
    for fused in [false, true] {
        lm.llama.set_fused(fused);
        let reward = LmReward::new(&lm, enc("Q: 1 + 1 = 2.\n"), &mask, -50.0, None).unwrap();
        got.push(reward.log_rewards(&lm, &problem, &trajs).unwrap());
    }
    for (c, f) in got[0].iter().flatten().zip(got[1].iter().flatten()) {
        assert!((c - f).abs() < 1e-3 * (1.0 + c.abs()), "composed {c} vs fused {f}");
    }
    let lens = |r: &Vec<Vec<f32>>| r.iter().map(Vec::len).collect::<Vec<_>>();
    assert!(lens(&got[0]) == lens(&got[1]) && lens(&got[0]).iter().all(|&n| n > 0));
}

/// The taped attention's fused softmax and its backward against the composed
/// ops (mask broadcast over the heads; f32 and bf16 scores, GQA, a padded and
/// a fully masked query).
#[test]
fn fused_softmax_and_its_backward_equal_the_composed_ops() {
    use amortize::model::fused_softmax::{masked_softmax, softmax_backward};
    let (b, kv, rep, t, s) = (2, 3, 3, 2, 300);
    let mut mask = vec![0f32; b * t * s];
    for q in 0..t {
        for k in 0..3 {
            mask[(b * t - t + q) * s + k] = -1e9; // batch row 1: three padded keys
        }
    }
    mask[..s].fill(-1e9); // batch row 0, query 0: nothing visible
    let mask = Tensor::from_vec(mask, (b, t, s), &dev()).unwrap();
    for dtype in [DType::F32, DType::BF16] {
        let scores = (random(&[b, kv, rep * t, s], 21) * 4.0).unwrap().to_dtype(dtype).unwrap();
        let composed = {
            let x = scores.to_dtype(DType::F32).unwrap().reshape((b, kv, rep, t, s)).unwrap();
            let m = mask.reshape((b, 1, 1, t, s)).unwrap().broadcast_as((b, kv, rep, t, s)).unwrap();
            candle_nn::ops::softmax_last_dim(&(x + m).unwrap()).unwrap().reshape((b, kv, rep * t, s)).unwrap()
        };
        let fused = masked_softmax(&scores, &mask).unwrap();
        assert_eq!((fused.dims(), fused.dtype()), (composed.dims(), DType::F32));
        assert!(max_abs_diff(&fused, &composed) < 1e-6, "{dtype:?} softmax: {}", max_abs_diff(&fused, &composed));

        let dp = random(&[b, kv, rep * t, s], 22).to_dtype(dtype).unwrap();
        let composed = {
            let d = dp.to_dtype(DType::F32).unwrap();
            let dot = (&d * &fused).unwrap().sum_keepdim(D::Minus1).unwrap();
            (&fused * d.broadcast_sub(&dot).unwrap()).unwrap().to_dtype(dtype).unwrap()
        };
        let got = softmax_backward(&fused, &dp).unwrap();
        let tol = if dtype == DType::F32 { 1e-6 } else { 1e-3 };
        assert_eq!(got.dtype(), dtype);
        assert!(max_abs_diff(&got, &composed) < tol, "{dtype:?} backward: {}", max_abs_diff(&got, &composed));
    }
    // Shape errors are errors.
    let scores = random(&[b, kv, rep * t, s], 1);
    assert!(masked_softmax(&scores, &random(&[b, t, s - 1], 2)).is_err());
    assert!(softmax_backward(&scores, &random(&[b, kv, rep * t, s - 1], 3)).is_err());
}
