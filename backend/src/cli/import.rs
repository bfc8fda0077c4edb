//! `amortize import DIR…`: runs trained by `train --out` or `compare` into
//! the server's data dir, as completed runs the browser app shows, compares
//! and samples (`amortize::jobs::import`). Every folder is read and checked
//! before any is added; the server may be running.

use std::path::PathBuf;

use amortize::jobs::import;
use amortize::store::Store;
use anyhow::bail;
use clap::Args;

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// Run folders: `train --out DIR`, or `compare`'s gfn-…/ppo-…/sft-… folders.
    #[arg(required = true)]
    pub dirs: Vec<PathBuf>,
    /// The server's data dir (as `serve --data-dir`).
    #[arg(long, default_value = "data")]
    pub data_dir: PathBuf,
    /// Put the runs in this experiment (created when missing).
    #[arg(long)]
    pub experiment: Option<String>,
    /// The run's name (one folder only); default: the folder's name.
    #[arg(long)]
    pub name: Option<String>,
}

pub fn run(a: ImportArgs) -> anyhow::Result<()> {
    if a.name.is_some() && a.dirs.len() > 1 {
        bail!("invalid --name: it names one run, and {} folders were given", a.dirs.len());
    }
    if let Some(e) = &a.experiment {
        amortize_shared::api::valid_name(e).map_err(|m| anyhow::anyhow!("invalid --experiment `{e}`: {m}"))?;
    }
    let prepared = a.dirs.iter().map(|d| import::prepare(d, a.name.as_deref())).collect::<amortize::Result<Vec<_>>>()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let store = Store::open(&a.data_dir).await?;
        for p in prepared {
            let dir = p.dir.display().to_string();
            let run = import::import(&store, p, a.experiment.as_deref()).await?;
            println!("{}\t{}\t{} {} steps\t{dir}", run.id, run.name, run.method.as_str(), run.step);
        }
        anyhow::Ok(())
    })
}
