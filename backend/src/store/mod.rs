//! The server's persistent state: SQLite (sqlx, WAL, migrations in
//! `backend/migrations/`) for experiments, datasets, runs, metric series,
//! recent training samples and comparisons; files under the data dir for
//! everything large (run directories with checkpoints and adapters, datasets).
//! Owns the schema and the data-dir layout; knows nothing of HTTP or training.

mod runs;

use std::path::{Path, PathBuf};
use std::str::FromStr;

use amortize_shared::api::{Comparison, CreateComparison, Dataset, Experiment};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

pub use runs::NewRun;

use crate::util::now_rfc3339;
use crate::{Error, Result};

/// The database and the data directory beside it.
#[derive(Clone)]
pub struct Store {
    pub pool: SqlitePool,
    root: PathBuf,
}

impl Store {
    /// Opens (creating if needed) `<dir>/amortize.db` and applies migrations.
    pub async fn open(dir: &Path) -> Result<Store> {
        for sub in ["", "runs", "datasets"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(|e| Error::file(dir.join(sub), e))?;
        }
        let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", dir.join("amortize.db").display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(std::time::Duration::from_secs(10));
        let pool = SqlitePoolOptions::new().max_connections(4).connect_with(opts).await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Store { pool, root: dir.to_path_buf() })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where run `id` keeps its checkpoints, metrics file and final adapter.
    pub fn run_dir(&self, id: &str) -> PathBuf {
        self.root.join("runs").join(id)
    }

    /// Where dataset `name` is stored.
    pub fn dataset_path(&self, name: &str) -> PathBuf {
        self.root.join("datasets").join(name)
    }

    /// SQLite's own consistency check ("ok" when intact).
    pub async fn integrity_check(&self) -> Result<String> {
        Ok(sqlx::query_scalar::<_, String>("PRAGMA integrity_check").fetch_one(&self.pool).await?)
    }

    // --- experiments -------------------------------------------------------

    pub async fn create_experiment(&self, name: &str, description: &str) -> Result<Experiment> {
        let now = now_rfc3339();
        let res = sqlx::query("INSERT INTO experiments (name, description, created_at) VALUES (?, ?, ?)")
            .bind(name)
            .bind(description)
            .bind(&now)
            .execute(&self.pool)
            .await;
        match res {
            Ok(_) => self.experiment(name).await?.ok_or_else(|| Error::NotFound(format!("experiment `{name}`"))),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(Error::Conflict(format!("experiment `{name}` already exists"))),
            Err(e) => Err(e.into()),
        }
    }

    /// The experiment's id, creating it when missing.
    pub async fn experiment_id(&self, name: &str) -> Result<i64> {
        sqlx::query("INSERT OR IGNORE INTO experiments (name, description, created_at) VALUES (?, '', ?)")
            .bind(name)
            .bind(now_rfc3339())
            .execute(&self.pool)
            .await?;
        Ok(sqlx::query_scalar("SELECT id FROM experiments WHERE name = ?").bind(name).fetch_one(&self.pool).await?)
    }

    pub async fn experiment(&self, name: &str) -> Result<Option<Experiment>> {
        Ok(self.experiments().await?.into_iter().find(|e| e.name == name))
    }

    pub async fn experiments(&self) -> Result<Vec<Experiment>> {
        let rows = sqlx::query(
            "SELECT e.id, e.name, e.description, e.created_at, COUNT(r.id) AS runs \
             FROM experiments e LEFT JOIN runs r ON r.experiment_id = e.id GROUP BY e.id ORDER BY e.id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| Experiment {
                id: r.get("id"),
                name: r.get("name"),
                description: r.get("description"),
                created_at: r.get("created_at"),
                runs: r.get::<i64, _>("runs") as usize,
            })
            .collect())
    }

    // --- datasets ----------------------------------------------------------

    /// Stores a validated dataset file atomically and records it.
    pub async fn put_dataset(&self, name: &str, task: &str, body: &[u8], lines: usize) -> Result<Dataset> {
        let path = self.dataset_path(name);
        crate::util::write_atomic(&path, body).map_err(|e| Error::file(&path, e))?;
        let d = Dataset { name: name.into(), task: task.into(), lines, bytes: body.len() as u64, created_at: now_rfc3339() };
        sqlx::query("INSERT OR REPLACE INTO datasets (name, task, lines, bytes, created_at) VALUES (?, ?, ?, ?, ?)")
            .bind(&d.name)
            .bind(&d.task)
            .bind(d.lines as i64)
            .bind(d.bytes as i64)
            .bind(&d.created_at)
            .execute(&self.pool)
            .await?;
        Ok(d)
    }

    pub async fn datasets(&self) -> Result<Vec<Dataset>> {
        let rows = sqlx::query("SELECT name, task, lines, bytes, created_at FROM datasets ORDER BY name").fetch_all(&self.pool).await?;
        Ok(rows
            .iter()
            .map(|r| Dataset {
                name: r.get("name"),
                task: r.get("task"),
                lines: r.get::<i64, _>("lines") as usize,
                bytes: r.get::<i64, _>("bytes") as u64,
                created_at: r.get("created_at"),
            })
            .collect())
    }

    pub async fn dataset(&self, name: &str) -> Result<Dataset> {
        self.datasets().await?.into_iter().find(|d| d.name == name).ok_or_else(|| Error::NotFound(format!("no dataset `{name}`")))
    }

    // --- comparisons -------------------------------------------------------

    /// Records a finished comparison and returns it with its id.
    pub async fn put_comparison(&self, req: &CreateComparison, mut c: Comparison) -> Result<Comparison> {
        c.created_at = now_rfc3339();
        let res = sqlx::query("INSERT INTO comparisons (request, result, created_at) VALUES (?, '', ?)")
            .bind(serde_json::to_string(req)?)
            .bind(&c.created_at)
            .execute(&self.pool)
            .await?;
        c.id = res.last_insert_rowid();
        sqlx::query("UPDATE comparisons SET result = ? WHERE id = ?").bind(serde_json::to_string(&c)?).bind(c.id).execute(&self.pool).await?;
        Ok(c)
    }

    pub async fn comparison(&self, id: i64) -> Result<Comparison> {
        let s: Option<String> = sqlx::query_scalar("SELECT result FROM comparisons WHERE id = ?").bind(id).fetch_optional(&self.pool).await?;
        let s = s.ok_or_else(|| Error::NotFound(format!("no comparison {id}")))?;
        Ok(serde_json::from_str(&s)?)
    }

    pub async fn delete_comparison(&self, id: i64) -> Result<()> {
        let done = sqlx::query("DELETE FROM comparisons WHERE id = ?").bind(id).execute(&self.pool).await?;
        if done.rows_affected() == 0 {
            return Err(Error::NotFound(format!("no comparison {id}")));
        }
        Ok(())
    }

    pub async fn comparisons(&self) -> Result<Vec<Comparison>> {
        let rows: Vec<String> = sqlx::query_scalar("SELECT result FROM comparisons ORDER BY id DESC LIMIT 100").fetch_all(&self.pool).await?;
        rows.iter().map(|s| serde_json::from_str(s).map_err(Error::from)).collect()
    }
}
