//! The adapter a GFlowNet or PPO run starts from when it is created from
//! another run's (`CreateRun::init_from`): checked against the new run's LoRA
//! settings and the served model when the run is created, then copied into
//! the new run's folder (`init-adapter/`), so that the run owns it whatever
//! later happens to the other. Knows nothing of HTTP.

use std::path::{Path, PathBuf};

use amortize_shared::api::Run;
use candle_core::Device;

use crate::gfn::{starting_adapter, TrainConfig};
use crate::model::{LanguageModel, LoraAdapter};
use crate::{Error, Result};

/// Where in a run's folder the adapter it starts from is kept.
pub const DIR: &str = "init-adapter";

/// Copies the final adapter of run `from` (its folder `from_dir`) into
/// `to/init-adapter`, after checking that it fits `cfg` and the model.
pub fn take(lm: &LanguageModel, from: &Run, from_dir: &Path, cfg: &TrainConfig, to: &Path) -> Result<()> {
    let adapter = from_dir.join("adapter");
    if !adapter.join("adapter_config.json").exists() {
        let why = if from.method.trains() { format!("it is {}", from.status.as_str()) } else { "it is a base-model run".to_string() };
        return Err(Error::invalid("init_from", format!("run `{}` has no final adapter to start from ({why})", from.name)));
    }
    // Read whole (on the CPU: a check, not a use) so that a bad file is refused now.
    starting_adapter(&adapter, cfg, lm.config(), &Device::Cpu).map_err(|e| Error::invalid("init_from", format!("run `{}`: {}", from.name, plain(e))))?;
    let dest = to.join(DIR);
    std::fs::create_dir_all(&dest).map_err(|e| Error::file(&dest, e))?;
    for name in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(adapter.join(name), dest.join(name)).map_err(|e| Error::file(adapter.join(name), e))?;
    }
    Ok(())
}

/// An invalid-input error's message without its field (it gets another).
fn plain(e: Error) -> String {
    match e {
        Error::Invalid { message, .. } => message,
        e => e.to_string(),
    }
}

/// The folder of the adapter the run in `dir` starts from, if it has one.
pub fn path(dir: &Path) -> Option<PathBuf> {
    Some(dir.join(DIR)).filter(|p| p.exists())
}

/// The adapter a fresh start of the run in `dir` begins with, if it has one.
pub fn load(lm: &LanguageModel, dir: &Path, cfg: &TrainConfig) -> Result<Option<LoraAdapter>> {
    path(dir).map(|from| starting_adapter(&from, cfg, lm.config(), lm.device())).transpose()
}

/// Empties a run's folder for a fresh start, keeping the adapter it starts from.
pub fn clear(dir: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
    for e in entries {
        let e = e.map_err(|e| Error::file(dir, e))?;
        if e.file_name() == DIR {
            continue;
        }
        let p = e.path();
        let gone = if e.file_type().map_err(|err| Error::file(&p, err))?.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
        gone.map_err(|err| Error::file(&p, err))?;
    }
    Ok(())
}
