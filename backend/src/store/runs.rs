//! Runs, their metric series, their evaluations during training and their
//! recent training samples.
//! A run's series is keyed by step, so a resumed run that repeats steps after
//! its last checkpoint overwrites them instead of duplicating them.

use amortize_shared::api::{EvalPoint, MetricPoint, Method, Run, RunStatus, StepSample};
use amortize_shared::config::TrainConfig;
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use super::Store;
use crate::util::now_rfc3339;
use crate::{Error, Result};

/// What a new run row holds.
pub struct NewRun {
    pub id: String,
    pub name: String,
    pub experiment: Option<String>,
    pub task: String,
    pub method: Method,
    pub config: TrainConfig,
    pub task_options: serde_json::Map<String, serde_json::Value>,
    pub dataset: Option<String>,
    pub eval_samples: Option<usize>,
    pub notes: String,
    pub shots: Option<usize>,
    pub eval_every: Option<usize>,
    pub init_from: Option<String>,
}

/// Recent training samples kept per run.
const KEEP_SAMPLE_STEPS: i64 = 20;

const RUN_COLUMNS: &str = "r.id, r.name, e.name AS experiment, r.task, r.method, r.status, r.step, r.steps, r.config, \
     r.task_options, r.dataset, r.eval_samples, r.error, r.final_metrics, r.checkpoint_step, r.created_at, r.updated_at, r.notes, r.shots, r.eval_every, r.init_from";

fn run_from_row(r: &SqliteRow) -> Result<Run> {
    let method: String = r.get("method");
    let status: String = r.get("status");
    let bad = |what: &str| Error::Conflict(format!("stored run has an unreadable {what}"));
    Ok(Run {
        id: r.get("id"),
        name: r.get("name"),
        experiment: r.get("experiment"),
        task: r.get("task"),
        method: Method::ALL.into_iter().find(|m| m.as_str() == method).ok_or_else(|| bad("method"))?,
        status: RunStatus::parse(&status).ok_or_else(|| bad("status"))?,
        step: r.get::<i64, _>("step") as usize,
        steps: r.get::<i64, _>("steps") as usize,
        config: serde_json::from_str(r.get::<&str, _>("config"))?,
        task_options: serde_json::from_str(r.get::<&str, _>("task_options"))?,
        dataset: r.get("dataset"),
        eval_samples: r.get::<Option<i64>, _>("eval_samples").map(|n| n as usize),
        error: r.get("error"),
        final_metrics: r.get::<Option<&str>, _>("final_metrics").map(serde_json::from_str).transpose()?,
        checkpoint_step: r.get::<Option<i64>, _>("checkpoint_step").map(|s| s as usize),
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
        notes: r.get("notes"),
        shots: r.get::<Option<i64>, _>("shots").map(|n| n as usize),
        eval_every: r.get::<Option<i64>, _>("eval_every").map(|n| n as usize),
        init_from: r.get("init_from"),
        progress: None,
    })
}

impl Store {
    pub async fn insert_run(&self, n: NewRun) -> Result<Run> {
        // A base-model run trains no steps: its progress is its evaluation.
        let steps = if n.method.trains() { n.config.steps } else { 0 };
        let row = RowState { status: "queued", step: 0, steps, final_metrics: None, created_at: None };
        let experiment_id = self.experiment_of(&n).await?;
        insert_row(&mut *self.pool.acquire().await?, &n, experiment_id, row).await?;
        self.run(&n.id).await
    }

    /// A run trained elsewhere (`jobs::import`), whole and completed: its
    /// row (created at `created_at`), its series, its evaluations and its
    /// final metrics in one transaction, so a failure leaves nothing of it.
    pub async fn insert_finished_run(&self, n: NewRun, created_at: &str, points: &[MetricPoint], evals: &[EvalPoint], final_metrics: Option<&std::collections::BTreeMap<String, f64>>) -> Result<Run> {
        let step = points.last().map_or(0, |p| p.step);
        // SFT's steps are its batches: the run's length is where it ended.
        let steps = if n.method == Method::Sft { step } else { n.config.steps };
        let row = RowState { status: "completed", step, steps, final_metrics: final_metrics.map(serde_json::to_string).transpose()?, created_at: Some(created_at.to_string()) };
        let experiment_id = self.experiment_of(&n).await?;
        let mut tx = self.pool.begin().await?;
        insert_row(&mut tx, &n, experiment_id, row).await?;
        for p in points {
            sqlx::query("INSERT OR REPLACE INTO metrics (run_id, step, point) VALUES (?, ?, ?)").bind(&n.id).bind(p.step as i64).bind(serde_json::to_string(p)?).execute(&mut *tx).await?;
        }
        for e in evals {
            sqlx::query("INSERT OR REPLACE INTO evals (run_id, step, metrics) VALUES (?, ?, ?)").bind(&n.id).bind(e.step as i64).bind(serde_json::to_string(&e.metrics)?).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        self.run(&n.id).await
    }

    /// The id of the run's experiment (created when missing), if it names one.
    async fn experiment_of(&self, n: &NewRun) -> Result<Option<i64>> {
        match &n.experiment {
            Some(e) => Ok(Some(self.experiment_id(e).await?)),
            None => Ok(None),
        }
    }

    /// Renames a run, replaces its notes and/or moves it to another
    /// experiment (`Some("")`: none); `None` keeps a field.
    pub async fn update_run(&self, id: &str, name: Option<&str>, notes: Option<&str>, experiment: Option<&str>) -> Result<Run> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("UPDATE runs SET name = COALESCE(?, name), notes = COALESCE(?, notes), updated_at = ? WHERE id = ?")
            .bind(name)
            .bind(notes)
            .bind(now_rfc3339())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(Error::NotFound(format!("no run `{id}`")));
        }
        if let Some(e) = experiment {
            let eid: Option<i64> = if e.is_empty() {
                None
            } else {
                sqlx::query("INSERT OR IGNORE INTO experiments (name, description, created_at) VALUES (?, '', ?)").bind(e).bind(now_rfc3339()).execute(&mut *tx).await?;
                Some(sqlx::query_scalar("SELECT id FROM experiments WHERE name = ?").bind(e).fetch_one(&mut *tx).await?)
            };
            sqlx::query("UPDATE runs SET experiment_id = ? WHERE id = ?").bind(eid).bind(id).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        self.run(id).await
    }

    pub async fn run(&self, id: &str) -> Result<Run> {
        let row = sqlx::query(&format!("SELECT {RUN_COLUMNS} FROM runs r LEFT JOIN experiments e ON e.id = r.experiment_id WHERE r.id = ?"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        run_from_row(&row.ok_or_else(|| Error::NotFound(format!("no run `{id}`")))?)
    }

    pub async fn runs(&self) -> Result<Vec<Run>> {
        let rows = sqlx::query(&format!("SELECT {RUN_COLUMNS} FROM runs r LEFT JOIN experiments e ON e.id = r.experiment_id ORDER BY r.created_at, r.id"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(run_from_row).collect()
    }

    /// Sets the status (and the error message, cleared when `None`).
    pub async fn set_status(&self, id: &str, status: RunStatus, error: Option<&str>) -> Result<Run> {
        sqlx::query("UPDATE runs SET status = ?, error = ?, updated_at = ? WHERE id = ?")
            .bind(status.as_str())
            .bind(error)
            .bind(now_rfc3339())
            .bind(id)
            .execute(&self.pool)
            .await?;
        self.run(id).await
    }

    /// Deletes a run's rows (the run, its metrics and samples) unless it is
    /// queued, running or evaluating. Its folder is the caller's.
    pub async fn delete_run(&self, id: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        // A write first takes SQLite's write lock: no status change can come
        // between the check and the delete.
        let touched = sqlx::query("UPDATE runs SET updated_at = updated_at WHERE id = ?").bind(id).execute(&mut *tx).await?.rows_affected();
        if touched == 0 {
            return Err(Error::NotFound(format!("no run `{id}`")));
        }
        let status: String = sqlx::query_scalar("SELECT status FROM runs WHERE id = ?").bind(id).fetch_one(&mut *tx).await?;
        if RunStatus::parse(&status).is_none_or(RunStatus::is_active) {
            return Err(Error::Conflict(format!("run `{id}` is {status}; cancel it before deleting it")));
        }
        for table in ["metrics", "step_samples", "evals"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE run_id = ?")).bind(id).execute(&mut *tx).await?;
        }
        sqlx::query("DELETE FROM runs WHERE id = ?").bind(id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn set_checkpoint(&self, id: &str, step: usize) -> Result<()> {
        sqlx::query("UPDATE runs SET checkpoint_step = ?, updated_at = ? WHERE id = ?").bind(step as i64).bind(now_rfc3339()).bind(id).execute(&self.pool).await?;
        Ok(())
    }

    pub async fn set_final_metrics(&self, id: &str, metrics: &std::collections::BTreeMap<String, f64>) -> Result<()> {
        sqlx::query("UPDATE runs SET final_metrics = ?, updated_at = ? WHERE id = ?")
            .bind(serde_json::to_string(metrics)?)
            .bind(now_rfc3339())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records one step: its metrics point and the run's step counter, together.
    pub async fn record_step(&self, id: &str, point: &MetricPoint, samples: &[StepSample]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT OR REPLACE INTO metrics (run_id, step, point) VALUES (?, ?, ?)")
            .bind(id)
            .bind(point.step as i64)
            .bind(serde_json::to_string(point)?)
            .execute(&mut *tx)
            .await?;
        if !samples.is_empty() {
            sqlx::query("INSERT OR REPLACE INTO step_samples (run_id, step, samples) VALUES (?, ?, ?)")
                .bind(id)
                .bind(point.step as i64)
                .bind(serde_json::to_string(samples)?)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM step_samples WHERE run_id = ? AND step <= ?").bind(id).bind(point.step as i64 - KEEP_SAMPLE_STEPS).execute(&mut *tx).await?;
        }
        sqlx::query("UPDATE runs SET step = ?, updated_at = ? WHERE id = ?").bind(point.step as i64).bind(now_rfc3339()).bind(id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Forgets everything after `step` (a resume restarts from that checkpoint).
    pub async fn rewind(&self, id: &str, step: usize) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM metrics WHERE run_id = ? AND step > ?").bind(id).bind(step as i64).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM step_samples WHERE run_id = ? AND step > ?").bind(id).bind(step as i64).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM evals WHERE run_id = ? AND step > ?").bind(id).bind(step as i64).execute(&mut *tx).await?;
        sqlx::query("UPDATE runs SET step = ?, updated_at = ? WHERE id = ?").bind(step as i64).bind(now_rfc3339()).bind(id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The run's series, or only its steps after `after`.
    pub async fn metrics(&self, id: &str, after: Option<usize>) -> Result<Vec<MetricPoint>> {
        // Steps are counted, so far below 2^63; -1 means "from the first".
        let after = after.map_or(-1, |a| i64::try_from(a).unwrap_or(i64::MAX));
        let rows: Vec<String> = sqlx::query_scalar("SELECT point FROM metrics WHERE run_id = ? AND step > ? ORDER BY step")
            .bind(id)
            .bind(after)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|s| serde_json::from_str(s).map_err(Error::from)).collect()
    }

    /// Records the task's evaluation at `point.step` (replacing one a resume repeats).
    pub async fn record_eval(&self, id: &str, point: &EvalPoint) -> Result<()> {
        sqlx::query("INSERT OR REPLACE INTO evals (run_id, step, metrics) VALUES (?, ?, ?)")
            .bind(id)
            .bind(point.step as i64)
            .bind(serde_json::to_string(&point.metrics)?)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The run's evaluations during training, by step.
    pub async fn evals(&self, id: &str) -> Result<Vec<EvalPoint>> {
        let rows: Vec<(i64, String)> = sqlx::query_as("SELECT step, metrics FROM evals WHERE run_id = ? ORDER BY step").bind(id).fetch_all(&self.pool).await?;
        rows.into_iter().map(|(step, m)| Ok(EvalPoint { step: step as usize, metrics: serde_json::from_str(&m)? })).collect()
    }

    /// The samples of the last steps, newest first.
    pub async fn step_samples(&self, id: &str) -> Result<Vec<StepSample>> {
        let rows: Vec<String> = sqlx::query_scalar("SELECT samples FROM step_samples WHERE run_id = ? ORDER BY step DESC").bind(id).fetch_all(&self.pool).await?;
        let mut out = Vec::new();
        for s in rows {
            out.extend(serde_json::from_str::<Vec<StepSample>>(&s)?);
        }
        Ok(out)
    }
}

/// What a new run row starts with besides its request.
struct RowState {
    status: &'static str,
    step: usize,
    steps: usize,
    final_metrics: Option<String>,
    /// `None`: now, as its `updated_at`.
    created_at: Option<String>,
}

/// The one INSERT of a run row.
async fn insert_row(conn: &mut sqlx::SqliteConnection, n: &NewRun, experiment_id: Option<i64>, row: RowState) -> Result<()> {
    let now = now_rfc3339();
    sqlx::query(
        "INSERT INTO runs (id, name, experiment_id, task, method, status, step, steps, config, task_options, dataset, \
         eval_samples, final_metrics, created_at, updated_at, notes, shots, eval_every, init_from) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&n.id)
    .bind(&n.name)
    .bind(experiment_id)
    .bind(&n.task)
    .bind(n.method.as_str())
    .bind(row.status)
    .bind(row.step as i64)
    .bind(row.steps as i64)
    .bind(serde_json::to_string(&n.config)?)
    .bind(serde_json::to_string(&n.task_options)?)
    .bind(&n.dataset)
    .bind(n.eval_samples.map(|n| n as i64))
    .bind(row.final_metrics)
    .bind(row.created_at.as_deref().unwrap_or(&now))
    .bind(&now)
    .bind(&n.notes)
    .bind(n.shots.map(|k| k as i64))
    .bind(n.eval_every.map(|k| k as i64))
    .bind(&n.init_from)
    .execute(conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stored metric reads back as the very number computed (JSON in
    /// SQLite, parsed with serde_json's exact float round trip): the server's
    /// evaluations equal the CLI's bit for bit.
    #[test]
    fn metrics_read_back_to_the_last_bit() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let store = Store::open(dir.path()).await.unwrap();
            let new = NewRun { id: "run-1".into(), name: "r".into(), experiment: None, task: "rng".into(), method: Method::Gfn, config: TrainConfig::default(), task_options: Default::default(), dataset: None, eval_samples: None, notes: String::new(), shots: None, eval_every: Some(2), init_from: None };
            store.insert_run(new).await.unwrap();
            // A value the default (fast) parser reads one ulp off.
            let kl = 0.22216313218492734_f64;
            let metrics: std::collections::BTreeMap<String, f64> = [("kl".to_string(), kl)].into();
            store.record_eval("run-1", &EvalPoint { step: 2, metrics: metrics.clone() }).await.unwrap();
            store.set_final_metrics("run-1", &metrics).await.unwrap();
            assert_eq!(store.evals("run-1").await.unwrap()[0].metrics["kl"].to_bits(), kl.to_bits());
            assert_eq!(store.run("run-1").await.unwrap().final_metrics.unwrap()["kl"].to_bits(), kl.to_bits());
        });
    }
}
