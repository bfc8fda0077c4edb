//! `amortize serve`: load the base model once, open the data dir, serve the
//! API and the browser app until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use amortize::model::{parse_device, parse_dtype, LanguageModel};
use amortize::server::{self, sampler::Limits, ServeOptions};
use clap::Args;

use super::common::DEFAULT_MODEL;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free one; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// SQLite database, run directories and datasets live here.
    #[arg(long, default_value = "data")]
    pub data_dir: PathBuf,
    /// A `.gguf` file or a Hugging Face directory.
    #[arg(long, default_value = DEFAULT_MODEL, env = "AMORTIZE_MODEL")]
    pub model: PathBuf,
    /// cpu, cuda, cuda:N or auto (the first GPU when the binary was built
    /// with CUDA and one is present, else the CPU).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Bearer token every API call must carry; required to bind beyond loopback.
    #[arg(long, env = "AMORTIZE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The built browser app.
    #[arg(long, default_value = "frontend/dist")]
    pub dist: PathBuf,
    /// Leave runs interrupted by a crash or restart for a manual resume
    /// (`POST /api/runs/{id}/resume`) instead of resuming them on start.
    #[arg(long)]
    pub no_resume: bool,
    /// Runs that may wait in the job queue.
    #[arg(long, default_value_t = 16)]
    pub max_queue: usize,
    /// Most samples per request.
    #[arg(long, default_value_t = 256)]
    pub max_samples: usize,
    /// Most new tokens per sample.
    #[arg(long, default_value_t = 512)]
    pub max_tokens: usize,
}

pub fn run(a: ServeArgs) -> anyhow::Result<()> {
    // Check the address before spending time on the model.
    server::check_exposure(&a.addr, a.token.as_deref())?;
    if a.max_queue == 0 || a.max_samples == 0 || a.max_tokens == 0 {
        anyhow::bail!("invalid --max-queue/--max-samples/--max-tokens: must be at least 1");
    }
    let device = parse_device(&a.device)?;
    let lm = LanguageModel::load(&a.model, &device, parse_dtype(&a.dtype)?)?;
    let opts = ServeOptions {
        addr: a.addr,
        data_dir: a.data_dir,
        token: a.token,
        dist: a.dist,
        resume: !a.no_resume,
        max_queue: a.max_queue,
        limits: Limits { max_n: a.max_samples, max_tokens: a.max_tokens, ..Limits::default() },
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(server::serve(lm, &a.model.display().to_string(), opts))
}
