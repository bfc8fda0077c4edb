//! The decode-step projections of `model::gemv` against the composed ops they
//! replace — op by op at real shapes in f32 and bf16, then whole decodes of a
//! tiny model with the gemv blocks on and off (plain, through a folded
//! adapter, in fixed-shape steps). Runs on `AMORTIZE_TEST_DEVICE` (the GPU
//! script sets `cuda`), so the same checks cover the CPU reference here and
//! the CUDA kernel there.

use amortize::decode::{self, SampleConfig};
use amortize::model::gemv::{block_passes, gemv, Fuse, MAX_ROWS};
use amortize::model::tiny::write_tiny_model;
use amortize::model::{LanguageModel, LoraAdapter, LoraConfig, Mode, Proj};
use candle_core::{DType, Device, Tensor, D};
use rand::{Rng, SeedableRng};

fn dev() -> Device {
    match std::env::var("AMORTIZE_TEST_DEVICE").as_deref() {
        Ok("cuda") => amortize::model::parse_device("cuda").expect("AMORTIZE_TEST_DEVICE=cuda but no CUDA device"),
        _ => Device::Cpu,
    }
}

fn random(dims: &[usize], scale: f32, dtype: DType, seed: u64) -> Tensor {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let v: Vec<f32> = (0..dims.iter().product()).map(|_| rng.random_range(-scale..scale)).collect();
    Tensor::from_vec(v, dims, &dev()).unwrap().to_dtype(dtype).unwrap()
}

fn max_abs(t: &Tensor) -> f32 {
    t.to_dtype(DType::F32).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    max_abs(&(a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap()).unwrap())
}

/// What `llama.rs`'s fused path runs instead: candle's RMSNorm, a matrix
/// product, SwiGLU, the residual add.
fn composed(x: &Tensor, w: &Tensor, fuse: Fuse) -> Tensor {
    let h = match fuse.norm {
        Some((nw, eps)) => candle_nn::ops::rms_norm(x, nw, eps as f32).unwrap(),
        None => x.clone(),
    };
    let mut y = h.broadcast_matmul(&w.t().unwrap()).unwrap();
    if fuse.swiglu {
        let n = w.dim(0).unwrap() / 2;
        y = (y.narrow(D::Minus1, 0, n).unwrap().silu().unwrap() * y.narrow(D::Minus1, n, n).unwrap()).unwrap();
    }
    match fuse.residual {
        Some(r) => (r + y).unwrap(),
        None => y,
    }
}

#[test]
fn gemv_equals_the_composed_ops_at_real_shapes() {
    // (rows, outputs, inputs): SmolLM2-135M's q/k/v, o, gate/up and down; a
    // 1.7B-wide input; fewer outputs than a block has warps.
    let shapes = [(1, 960, 576), (MAX_ROWS, 576, 576), (3, 1536, 576), (2, 576, 1536), (1, 64, 2048), (5, 3, 24), (2, 49152, 576)];
    for dtype in [DType::F32, DType::BF16] {
        for (i, &(m, n, k)) in shapes.iter().enumerate() {
            let seed = 10 * i as u64;
            let x = random(&[m, 1, k], 2.0, dtype, seed);
            let nw = random(&[k], 1.5, dtype, seed + 1);
            let res = random(&[m, 1, n], 3.0, dtype, seed + 2);
            let w = random(&[n, k], 0.1, dtype, seed + 3);
            let w2 = random(&[2 * n.min(8192), k], 0.1, dtype, seed + 4);
            let cases: [(&str, &Tensor, Fuse); 4] = [
                ("plain", &w, Fuse::default()),
                ("norm", &w, Fuse { norm: Some((&nw, 1e-5)), ..Fuse::default() }),
                ("residual", &w, Fuse { residual: Some(&res), ..Fuse::default() }),
                ("norm+swiglu", &w2, Fuse { norm: Some((&nw, 1e-5)), swiglu: true, ..Fuse::default() }),
            ];
            // The output head (SmolLM2's vocabulary, the tied embeddings) takes the plain product only.
            let cases = if n > 8192 { &cases[..1] } else { &cases[..] };
            for &(what, w, fuse) in cases {
                let got = gemv(&x, w, fuse).unwrap();
                let want = composed(&x, w, fuse);
                assert_eq!(got.dims(), want.dims());
                // bf16: a few roundings of the result apart (the product is
                // rounded before the add or SwiGLU, as the composed ops do).
                let tol = if dtype == DType::F32 { 1e-4 } else { 3e-2 };
                let (d, s) = (max_abs_diff(&got, &want), max_abs(&want));
                assert!(d <= tol * (1.0 + s), "{what} {dtype:?} m{m} n{n} k{k}: max |Δ| {d} (values up to {s})");
            }
        }
    }
}

#[test]
fn gemv_takes_a_weight_view_and_refuses_a_misaligned_one() {
    let x = random(&[2, 64], 1.0, DType::F32, 1);
    let big = random(&[10, 64], 1.0, DType::F32, 2);
    let view = big.narrow(0, 2, 8).unwrap(); // dense, from row 2: aligned
    let d = max_abs_diff(&gemv(&x, &view, Fuse::default()).unwrap(), &composed(&x, &view.copy().unwrap(), Fuse::default()));
    assert!(d < 1e-4, "{d}");
    let skew = big.flatten_all().unwrap().narrow(0, 3, 512).unwrap().reshape((8, 64)).unwrap();
    assert!(gemv(&x, &skew, Fuse::default()).is_err());
    // Inputs from a misaligned offset (or strided) are copied to an aligned start.
    let flat = random(&[200], 1.0, DType::F32, 3);
    let (xs, nw) = (flat.narrow(0, 3, 128).unwrap().reshape((2, 64)).unwrap(), flat.narrow(0, 133, 64).unwrap());
    let fuse = Fuse { norm: Some((&nw, 1e-5)), ..Fuse::default() };
    let d = max_abs_diff(&gemv(&xs, &view, fuse).unwrap(), &composed(&xs.contiguous().unwrap(), &view.copy().unwrap(), Fuse { norm: Some((&nw.contiguous().unwrap(), 1e-5)), ..fuse }));
    assert!(d < 1e-4, "{d}");
    let xt = random(&[64, 2], 1.0, DType::F32, 4).t().unwrap(); // [2, 64], strided
    let d = max_abs_diff(&gemv(&xt, &view, Fuse::default()).unwrap(), &composed(&xt.contiguous().unwrap(), &view.copy().unwrap(), Fuse::default()));
    assert!(d < 1e-4, "{d}");
}

fn tiny(dir: &tempfile::TempDir) -> LanguageModel {
    let paths = write_tiny_model(dir.path(), 11).unwrap();
    LanguageModel::load(&paths.gguf, &dev(), DType::F32).unwrap()
}

/// Prefill, then decode steps of 1 and of 3 tokens a row into reserved room,
/// with gemv off and on: every step's logits agree.
#[test]
fn gemv_blocks_give_the_fused_blocks_logits() {
    let dir = tempfile::tempdir().unwrap();
    let mut lm = tiny(&dir);
    if !lm.llama.fused() {
        return; // the gemv blocks run only with the fused ops (AMORTIZE_FUSED=0)
    }
    let prompts = vec![lm.tokenizer.encode("the cat").unwrap(), lm.tokenizer.encode("1 + 2 =").unwrap()];
    // Passes of 2 and 4 rows (`set_gemv(true)` takes up to 8 on any device;
    // by default the CPU runs only 1-row passes through the blocks).
    let steps: Vec<Vec<Vec<u32>>> = vec![vec![vec![40], vec![41]], vec![vec![42, 43], vec![45, 46]], vec![vec![48], vec![]]];
    let mut runs = Vec::new();
    let before = block_passes();
    for on in [false, true] {
        lm.llama.set_gemv(on);
        let mut cache = lm.llama.new_cache();
        let mut out = vec![lm.llama.logits(&lm.llama.forward(&prompts, &mut cache, None).unwrap()).unwrap()];
        cache.reserve(8).unwrap();
        for rows in &steps {
            out.push(lm.llama.logits(&lm.llama.forward(rows, &mut cache, None).unwrap()).unwrap());
        }
        runs.push(out);
    }
    for (i, (a, b)) in runs[0].iter().zip(&runs[1]).enumerate() {
        let d = max_abs_diff(a, b);
        assert!(d < 1e-4, "pass {i}: gemv vs fused blocks {d}");
    }
    // The three decode passes (2 rows × 1, 2 × 2, 2 × 1 tokens) took the gemv
    // blocks; the prefill (no room yet) did not. (Other tests may add theirs.)
    assert!(block_passes() - before >= 3, "{} gemv passes", block_passes() - before);
}

/// An autograd pass over a few rows keeps its gradient through the output
/// head: the gemv op has no backward, so tracked rows take the plain product.
#[test]
fn tracked_rows_keep_a_gradient_through_the_output_head() {
    let dir = tempfile::tempdir().unwrap();
    let mut lm = tiny(&dir);
    lm.llama.set_gemv(true);
    let h = lm.config().hidden_size;
    let x = candle_core::Var::from_tensor(&random(&[1, h], 1.0, DType::F32, 5)).unwrap();
    let logits = lm.llama.logits(x.as_tensor()).unwrap();
    let grads = logits.sum_all().unwrap().backward().unwrap();
    let g = grads.get(x.as_tensor()).expect("no gradient reached the hidden state through the head");
    assert!(max_abs(g) > 0.0);
}

/// Whole samples (chunked readback and stepwise, fixed-shape steps on and
/// off, through a folded adapter) are the same with gemv on and off.
#[test]
fn gemv_decoding_equals_fused_decoding() {
    let dir = tempfile::tempdir().unwrap();
    let mut lm = tiny(&dir);
    let adapter = LoraAdapter::new(lm.config(), LoraConfig { r: 2, alpha: 4.0, dropout: 0.0, targets: Proj::ALL.to_vec() }, &dev(), 3).unwrap();
    let folded = lm.llama.fold(&adapter.view(Mode::Infer, DType::F32).unwrap()).unwrap();
    let prompts = vec![lm.tokenizer.encode("the cat sat").unwrap(), lm.tokenizer.encode("1 +").unwrap()];
    let base = SampleConfig { n: 2, max_new_tokens: 9, temperature: 0.8, seed: 6, stop_tokens: Some(vec![]), ..Default::default() };
    let key = |v: &[decode::Sample]| v.iter().map(|s| (s.tokens.clone(), s.logprobs.iter().map(|l| (l * 1e3).round() as i64).collect::<Vec<_>>())).collect::<Vec<_>>();
    for (every, fixed) in [(Some(1), Some(false)), (None, Some(false)), (Some(1), Some(true)), (None, Some(true))] {
        for view in [None, Some(&folded)] {
            let cfg = SampleConfig { readback_every: every, static_steps: fixed, ..base.clone() };
            let mut runs = Vec::new();
            for on in [false, true] {
                lm.llama.set_gemv(on);
                runs.push(key(&decode::sample(&lm, &prompts, &cfg, view, None).unwrap()));
            }
            assert_eq!(runs[0], runs[1], "readback {every:?}, fixed steps {fixed:?}, folded {}", view.is_some());
            assert!(block_passes() > 0);
        }
    }
}
