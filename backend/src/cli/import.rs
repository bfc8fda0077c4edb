//! `amortize import DIR…`: runs trained by `train --out` or `compare` into
//! the server's data dir, as completed runs the browser app shows, compares
//! and samples (`amortize::jobs::import`). Every folder is read and checked
//! before any is added; the server may be running.

use std::path::{Path, PathBuf};

use amortize::jobs::import;
use amortize::store::Store;
use anyhow::bail;
use clap::Args;

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// Run folders: `train --out DIR`, `compare`'s gfn-…/ppo-…/sft-… folders,
    /// or a `compare --out` folder (all its trainings).
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
    let mut dirs = Vec::new();
    for d in &a.dirs {
        dirs.extend(run_folders(d)?);
    }
    if a.name.is_some() && dirs.len() > 1 {
        bail!("invalid --name: it names one run, and {} holds {} runs", a.dirs[0].display(), dirs.len());
    }
    let prepared = dirs.iter().map(|d| import::prepare(d, a.name.as_deref())).collect::<amortize::Result<Vec<_>>>()?;
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

/// `dir` itself when it is a run folder, else the run folders in it (a
/// `compare --out` folder's trainings, by name); a folder with neither is
/// kept, for `prepare` to refuse with its reason.
fn run_folders(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if dir.join(import::RUN_FILE).exists() || !dir.is_dir() {
        return Ok(vec![dir.to_path_buf()]);
    }
    let mut inner: Vec<PathBuf> = std::fs::read_dir(dir)?.flatten().map(|e| e.path()).filter(|p| p.join(import::RUN_FILE).exists()).collect();
    if inner.is_empty() {
        return Ok(vec![dir.to_path_buf()]);
    }
    inner.sort();
    Ok(inner)
}
