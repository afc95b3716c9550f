//! The history store's migrations, embedded in the binary. sqlx's
//! `migrate!` macro does the same at compile time, but it needs sqlx's
//! `macros` feature, which builds sqlx's SQLite and PostgreSQL drivers (and
//! SQLite's C source) a second time for the proc-macro: most of a minute of
//! a clean release build. This source yields the same migrations (version,
//! description and checksum as sqlx derives them from the file names and
//! text), so databases migrated by either agree.

use std::borrow::Cow;

use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};

/// One backend's migration files: name and text, oldest first.
#[derive(Debug, Clone, Copy)]
pub struct Embedded(&'static [(&'static str, &'static str)]);

macro_rules! files {
    ($dir:literal: $($name:literal),+ $(,)?) => {
        Embedded(&[$(($name, include_str!(concat!("migrations/", $dir, "/", $name)))),+])
    };
}

pub const SQLITE: Embedded = files!("sqlite":
    "20260101000000_gpu_samples.sql",
    "20261123000000_recorded_at_index.sql",
    "20261124000000_dlq_audit_and_tasks.sql",
    "20261204000000_kernel_log_position.sql",
);

pub const POSTGRES: Embedded = files!("postgres":
    "20260101000000_gpu_samples.sql",
    "20261123000000_recorded_at_index.sql",
    "20261124000000_dlq_audit_and_tasks.sql",
    "20261204000000_kernel_log_position.sql",
);

/// `<version>_<description>.sql` as sqlx reads it: the description has its
/// underscores turned into spaces.
fn migration(name: &str, sql: &'static str) -> Result<Migration, BoxDynError> {
    let (version, rest) = name
        .split_once('_')
        .ok_or_else(|| format!("migration {name:?} is not named <version>_<description>.sql"))?;
    let version: i64 = version
        .parse()
        .map_err(|_| format!("migration {name:?} does not start with a whole-number version"))?;
    let kind = MigrationType::from_filename(rest);
    let description = rest.trim_end_matches(kind.suffix()).replace('_', " ");
    let no_tx = sql.starts_with("-- no-transaction");
    Ok(Migration::new(
        version,
        Cow::Owned(description),
        kind,
        Cow::Borrowed(sql),
        no_tx,
    ))
}

impl<'s> MigrationSource<'s> for Embedded {
    fn resolve(self) -> futures_util::future::BoxFuture<'s, Result<Vec<Migration>, BoxDynError>> {
        Box::pin(async move {
            let mut out = self
                .0
                .iter()
                .map(|(name, sql)| migration(name, sql))
                .collect::<Result<Vec<_>, _>>()?;
            out.sort_by_key(|m| m.version);
            Ok(out)
        })
    }
}

impl Embedded {
    pub async fn migrator(self) -> Result<Migrator, sqlx::migrate::MigrateError> {
        Migrator::new(self).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file in each migrations folder is embedded, so a new migration
    /// cannot be forgotten here.
    #[test]
    fn every_migration_file_is_embedded() {
        for (dir, embedded) in [("sqlite", SQLITE), ("postgres", POSTGRES)] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("src/store/migrations")
                .join(dir);
            let mut on_disk: Vec<String> = std::fs::read_dir(path)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".sql"))
                .collect();
            on_disk.sort();
            let listed: Vec<String> = embedded.0.iter().map(|(n, _)| n.to_string()).collect();
            assert_eq!(listed, on_disk, "{dir}");
        }
    }

    /// Versions, descriptions and checksums are what sqlx derives from the
    /// folder itself (what the `migrate!` macro embedded before).
    #[tokio::test]
    async fn the_migrations_match_what_sqlx_reads_from_the_folder() {
        for (dir, embedded) in [("sqlite", SQLITE), ("postgres", POSTGRES)] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("src/store/migrations")
                .join(dir);
            let from_folder = Migrator::new(path.as_path()).await.unwrap();
            let ours = embedded.migrator().await.unwrap();
            let key = |m: &Migration| {
                (
                    m.version,
                    m.description.to_string(),
                    m.checksum.to_vec(),
                    m.no_tx,
                    m.sql.to_string(),
                )
            };
            let a: Vec<_> = from_folder.iter().map(key).collect();
            let b: Vec<_> = ours.iter().map(key).collect();
            assert_eq!(a.len(), 4, "{dir}");
            assert_eq!(a, b, "{dir}");
        }
    }
}
