//! Durable storage for `--data-dir`: every write is committed to an embedded redb database before
//! the API answers, and a restarted server loads the same objects and resourceVersion.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde_json::Value;

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const VERSION: &str = "resourceVersion";

/// The database of one server.
#[derive(Debug)]
pub struct Persist {
    db: Database,
}

/// What a restarted server starts from.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Objects by `resource/namespace/name`.
    pub objects: Vec<(String, Value)>,
    /// The last resourceVersion handed out.
    pub version: u64,
}

impl Persist {
    /// Opens (or creates) `dir/store.redb` and reads everything in it.
    pub fn open(dir: &Path) -> Result<(Self, Loaded), redb::Error> {
        std::fs::create_dir_all(dir).map_err(redb::Error::Io)?;
        let db = Database::create(dir.join("store.redb"))?;
        {
            let w = db.begin_write()?;
            w.open_table(OBJECTS)?;
            w.open_table(META)?;
            w.commit()?;
        }
        let mut loaded = Loaded::default();
        {
            let r = db.begin_read()?;
            let objects = r.open_table(OBJECTS)?;
            for item in objects.iter()? {
                let (k, v) = item?;
                if let Ok(value) = serde_json::from_slice(v.value()) {
                    loaded.objects.push((k.value().to_owned(), value));
                }
            }
            loaded.version = r.open_table(META)?.get(VERSION)?.map_or(0, |v| v.value());
        }
        Ok((Self { db }, loaded))
    }

    /// Stores (or, with `None`, removes) one object and the new resourceVersion, in one commit.
    pub fn write(
        &self,
        key: &str,
        object: Option<&Value>,
        version: u64,
    ) -> Result<(), redb::Error> {
        let w = self.db.begin_write()?;
        {
            let mut objects = w.open_table(OBJECTS)?;
            match object {
                Some(o) => {
                    let bytes = serde_json::to_vec(o).unwrap_or_default();
                    objects.insert(key, bytes.as_slice())?;
                }
                None => {
                    objects.remove(key)?;
                }
            }
            w.open_table(META)?.insert(VERSION, version)?;
        }
        w.commit()?;
        Ok(())
    }
}
