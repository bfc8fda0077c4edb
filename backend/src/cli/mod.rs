//! Command-line interface: `serve`, `train`, `eval`, `compare`, `import`, `sample`, `score`, `bench`. Each command is a small
//! function over the engine's public API; nothing here reaches into internals.

mod bench;
mod bench_gfn;
mod common;
mod compare;
mod import;
mod interrupt;
mod sample;
mod score;
mod serve;
mod train;

use clap::{Parser, Subcommand};

pub use common::ModelArgs;
pub use interrupt::Interrupted;

#[derive(Parser)]
#[command(name = "amortize", version, allow_negative_numbers = true, about = "GFlowNet fine-tuning of language models: sample, score, benchmark")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Sample continuations of a prompt from the base model or an adapter.
    Sample(sample::SampleArgs),
    /// Score a text: per-token log-probabilities under the model.
    Score(score::ScoreArgs),
    /// GFlowNet fine-tuning of an adapter on a task preset.
    Train(train::TrainArgs),
    /// A task's metrics for the base model or an adapter.
    Eval(train::EvalArgs),
    /// Several methods (base, PPO, GFlowNet, given adapters) on one task, side by side.
    Compare(compare::CompareArgs),
    /// Serve the JSON API and the browser app (runs, live progress, sampling, comparisons).
    Serve(serve::ServeArgs),
    /// Bring runs trained by `train --out` or `compare` into the server's data dir.
    Import(import::ImportArgs),
    /// Benchmarks (tokens/s) on the real model or random weights of a real shape.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Sample(a) => sample::run(a),
        Command::Score(a) => score::run(a),
        Command::Train(a) => train::train(a),
        Command::Eval(a) => train::eval(a),
        Command::Compare(a) => compare::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Import(a) => import::run(a),
        Command::Bench(b) => bench::run(b),
    }
}
