//! The app's pages, one module each (see the route table in `app`).

pub mod compare;
pub mod compare_evals;
pub mod compare_rate;
pub mod config_form;
pub mod curves;
pub mod custom_task;
pub mod differences;
pub mod home;
pub mod infill;
pub mod new_run;
pub mod run;
pub mod run_evals;
pub mod run_notes;
pub mod run_seeds;
pub mod sweep_plot;
