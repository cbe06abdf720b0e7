//! The data section loaded straight from the custom-format archive
//! (`logical/archive.rs`), without `pg_restore --section=data --file=-`
//! turning it into SQL first.
//!
//! `pg_dump --format=custom --compress=0` stores each table's COPY rows
//! as they are, in length-prefixed chunks: the loader strips the lengths
//! and hands the rows to its COPY connections, as it does with the rows it
//! cuts out of `pg_restore`'s SQL, without a second process re-encoding
//! the whole dump into a pipe (a third of the client's processor time on
//! a large table, which shares the machine with the server's COPY). What
//! the data section holds besides table data is done here too, on the
//! ordered connection: the sequences' `setval` (the entries' own
//! statements) and the large objects' contents (`lo_put`, in one
//! transaction, as `pg_restore` writes them in one). The session settings
//! are `pg_restore`'s: its fixed ones and the archive's encoding,
//! `standard_conforming_strings` and `search_path` entries.
//!
//! An archive of another version, compressed data, another encoding than
//! UTF-8 or a data entry of a kind not listed above goes through
//! `pg_restore` instead ([`Outcome::Unsupported`]); that is decided from
//! the table of contents, before anything is written.

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::postgres::types::Oid;
use sqlx::{AssertSqlSafe, PgConnection};
use tokio::io::AsyncRead;
use tokio::sync::mpsc;
use warmspare_store::{Check, Manifest, Repository};

use super::archive::{Archive, ArchiveError, Block, Entry, SECTION_DATA};
use super::load::{
    CHUNK, Chunk, CopyTarget, LoadedRows, Settings, parse_copy_table, run_loader, run_statements,
};
use super::restore::{corrupt_or, feed_dump};
use super::{LogicalMeta, RestoreOptions};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::pg::Target;

/// The in-process pipe from the verified download to the archive reader.
const PIPE: usize = 1 << 20;

/// Large object content sent per `lo_put`.
const BLOB_PIECE: usize = 1 << 20;

/// What [`load_data`] did.
pub(super) enum Outcome {
    /// The data section is loaded; the dump matched its digests.
    Loaded {
        /// The dump's content bytes.
        size: u64,
        /// Rows stored per table.
        rows: LoadedRows,
        /// The dump ids of the privilege entries (`ACL`, `DEFAULT ACL`),
        /// to apply last (read from the table of contents here, so that
        /// no `pg_restore --list` has to read it again).
        privileges: Vec<i64>,
    },
    /// The archive is not one read here; nothing was written.
    Unsupported,
}

/// Loads the data section of the snapshot's custom-format dump into
/// `staging` over `jobs` COPY connections (see the module's
/// documentation).
pub(super) async fn load_data(
    repo: &Repository,
    manifest: &Manifest,
    meta: &LogicalMeta,
    staging: &Target,
    options: &RestoreOptions,
    jobs: usize,
    emit: &(dyn Fn(Event) + Send + Sync),
) -> Result<Outcome> {
    let (writer, reader) = tokio::io::duplex(PIPE);
    let bytes = |n| emit(Event::Bytes(n));
    let feed = feed_dump(repo, manifest, meta, writer, Some(&bytes), Check::Stored);
    let bad = |e: ArchiveError| Error::BadDump {
        id: manifest.id.clone(),
        file: meta.dump_file.clone(),
        reason: match e {
            ArchiveError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                "it ends early".into()
            }
            e => e.to_string(),
        },
    };
    let load = async {
        let mut archive = Archive::open(reader).await.map_err(bad)?;
        let plan = match archive.unsupported() {
            Some(_) => return Ok(None),
            None => match Plan::new(&archive.toc) {
                Ok(plan) => plan,
                Err(_) => return Ok(None),
            },
        };
        let privileges = archive
            .toc
            .iter()
            .filter(|e| matches!(e.desc.as_deref(), Some("ACL" | "DEFAULT ACL")))
            .map(|e| e.dump_id)
            .collect();
        run_loader(staging, options, jobs, async |control, tx| {
            dispatch(&mut archive, &plan, control, staging, tx, &bad).await
        })
        .await
        .map(|rows| Some((rows, privileges)))
    };
    let (fed, loaded) = tokio::join!(feed, load);
    match (fed, loaded) {
        // Only the table of contents was read.
        (_, Ok(None)) => Ok(Outcome::Unsupported),
        (Ok(info), Ok(Some((rows, privileges)))) => Ok(Outcome::Loaded {
            size: info.size,
            rows,
            privileges,
        }),
        (Ok(_), Err(e)) => Err(e),
        // The loader stopped reading: its error, unless the dump does not
        // match its digest (corrupt input fails the loader too, and the
        // digest names the object).
        (Err(warmspare_store::Error::Io { source, .. }), loaded)
            if source.kind() == std::io::ErrorKind::BrokenPipe =>
        {
            let otherwise = match loaded {
                Err(e) => e,
                Ok(_) => Error::ToolIo {
                    tool: "the loader",
                    context: "stopped reading the dump early:",
                    source,
                },
            };
            Err(corrupt_or(repo, manifest, meta, otherwise).await)
        }
        (Err(e), _) => Err(e.into()),
    }
}

/// What the table of contents says the data section does.
struct Plan {
    /// The session settings of every connection.
    settings: Arc<Settings>,
    /// The sequences' `setval` statements.
    sequences: String,
    /// The COPY of each table data entry, by dump id.
    tables: HashMap<i64, Arc<CopyTarget>>,
}

impl Plan {
    /// The plan, or why the archive is left to `pg_restore`.
    fn new(toc: &[Entry]) -> Result<Self, String> {
        let defn = |desc: &str| {
            toc.iter()
                .find(|e| e.desc.as_deref() == Some(desc))
                .and_then(|e| e.defn.clone())
        };
        let encoding = defn("ENCODING").unwrap_or_default();
        if encoding.trim() != "SET client_encoding = 'UTF8';" {
            return Err(format!("encoding entry {:?}", encoding.trim()));
        }
        // `pg_restore`'s own session settings (`_doSetFixedOutputState`),
        // in its order.
        let mut sql = String::from(
            "SET statement_timeout = 0;\nSET lock_timeout = 0;\n\
             SET idle_in_transaction_session_timeout = 0;\n",
        );
        sql.push_str(&encoding);
        sql.push_str(&defn("STDSTRINGS").unwrap_or_default());
        sql.push_str(
            &defn("SEARCHPATH").unwrap_or_else(|| {
                "SELECT pg_catalog.set_config('search_path', '', false);\n".into()
            }),
        );
        sql.push_str(
            "SET check_function_bodies = false;\nSET xmloption = content;\n\
             SET client_min_messages = warning;\nSET row_security = off;\n",
        );
        let settings = Arc::new(Settings { generation: 1, sql });

        let mut sequences = String::new();
        let mut tables = HashMap::new();
        for entry in toc.iter().filter(|e| e.section == SECTION_DATA) {
            match entry.desc.as_deref().unwrap_or_default() {
                "TABLE DATA" => {
                    let Some(statement) = entry
                        .copy_stmt
                        .as_deref()
                        .map(str::trim_end)
                        .filter(|s| !s.is_empty())
                    else {
                        return Err("table data without a COPY statement (--inserts)".into());
                    };
                    let (display, key) = parse_copy_table(statement);
                    let target = CopyTarget {
                        statement: statement.to_owned(),
                        display,
                        key,
                        settings: Arc::clone(&settings),
                    };
                    tables.insert(entry.dump_id, Arc::new(target));
                }
                "SEQUENCE SET" => sequences.push_str(entry.defn.as_deref().unwrap_or_default()),
                "BLOBS" => {}
                other => return Err(format!("data entries of type {other:?}")),
            }
        }
        Ok(Self {
            settings,
            sequences,
            tables,
        })
    }
}

/// Reads the archive's data blocks: table rows in chunks to `tx`, the
/// sequences and large objects on `control`.
async fn dispatch<R: AsyncRead + Unpin>(
    archive: &mut Archive<R>,
    plan: &Plan,
    control: &mut PgConnection,
    target: &Target,
    tx: &mpsc::Sender<Chunk>,
    bad: &impl Fn(ArchiveError) -> Error,
) -> Result<()> {
    let mut statements = plan.settings.sql.clone();
    statements.push_str(&plan.sequences);
    run_statements(control, target, &mut statements).await?;
    while let Some(block) = archive.next_block().await.map_err(bad)? {
        match block {
            Block::Data(id) => {
                let Some(copy) = plan.tables.get(&id) else {
                    return Err(bad(ArchiveError::Format(format!(
                        "data for entry {id}, which is no table data entry"
                    ))));
                };
                if !table_rows(archive, copy, tx, CHUNK).await.map_err(bad)? {
                    // A connection failed and closed the channel; its
                    // error is the one reported.
                    return Ok(());
                }
            }
            Block::Blobs(_) => blobs(archive, control, target, bad).await?,
        }
    }
    Ok(())
}

/// One table's rows, cut at line ends into chunks of at least `chunk`
/// bytes for the COPY connections (the last may be smaller, or empty for
/// a table without rows). The end marker `\.` that `pg_dump` writes after
/// the rows (up to PostgreSQL 17) is dropped: it can only be the data's
/// last line (`COPY TO` escapes every backslash of a row), so only the
/// tail is looked at. `false` if the channel closed.
async fn table_rows<R: AsyncRead + Unpin>(
    archive: &mut Archive<R>,
    copy: &Arc<CopyTarget>,
    tx: &mpsc::Sender<Chunk>,
    chunk: usize,
) -> Result<bool, ArchiveError> {
    let fresh = || Vec::with_capacity(chunk + (chunk >> 4));
    let mut data = fresh();
    let mut sent = false;
    loop {
        let want = if data.len() >= chunk {
            data.len() + 1
        } else {
            chunk
        };
        if archive.read_data(&mut data, want).await? {
            break;
        }
        if data.len() < chunk {
            continue;
        }
        // Never a marker in a chunk of rows: cut before it.
        let rows = marker_at_end(&data).unwrap_or(data.len());
        if let Some(cut) = memchr::memrchr(b'\n', &data[..rows]) {
            let mut rest = fresh();
            rest.extend_from_slice(&data[cut + 1..]);
            data.truncate(cut + 1);
            let rows = Chunk {
                target: Arc::clone(copy),
                data: std::mem::replace(&mut data, rest),
            };
            if tx.send(rows).await.is_err() {
                return Ok(false);
            }
            sent = true;
        }
    }
    if let Some(end) = marker_at_end(&data) {
        data.truncate(end);
    }
    if !data.is_empty() || !sent {
        let rows = Chunk {
            target: Arc::clone(copy),
            data,
        };
        if tx.send(rows).await.is_err() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Where a trailing end marker starts in `data` (which starts at a line
/// start): a line `\.`, then only line ends.
fn marker_at_end(data: &[u8]) -> Option<usize> {
    let body = data.len() - data.iter().rev().take_while(|&&b| b == b'\n').count();
    if body == data.len() {
        return None;
    }
    let start = body.checked_sub(2)?;
    (&data[start..body] == b"\\." && (start == 0 || data[start - 1] == b'\n')).then_some(start)
}

/// A large objects block: each object's content written with `lo_put`
/// (the objects themselves were created by the pre-data section), all in
/// one transaction.
async fn blobs<R: AsyncRead + Unpin>(
    archive: &mut Archive<R>,
    control: &mut PgConnection,
    target: &Target,
    bad: &impl Fn(ArchiveError) -> Error,
) -> Result<()> {
    let sql = |context: String| move |e| target.sql_error(context, e);
    sqlx::raw_sql(AssertSqlSafe("BEGIN"))
        .execute(&mut *control)
        .await
        .map_err(sql("loading large objects".into()))?;
    let mut data = Vec::with_capacity(BLOB_PIECE);
    while let Some(oid) = archive.next_blob().await.map_err(bad)? {
        let mut offset = 0i64;
        loop {
            data.clear();
            let ended = archive
                .read_data(&mut data, BLOB_PIECE)
                .await
                .map_err(bad)?;
            if !data.is_empty() {
                sqlx::query("SELECT pg_catalog.lo_put($1, $2, $3)")
                    .bind(Oid(oid))
                    .bind(offset)
                    .bind(&data[..])
                    .execute(&mut *control)
                    .await
                    .map_err(sql(format!("loading large object {oid}")))?;
                offset += data.len() as i64;
            }
            if ended {
                break;
            }
        }
    }
    sqlx::raw_sql(AssertSqlSafe("COMMIT"))
        .execute(&mut *control)
        .await
        .map_err(sql("loading large objects".into()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::archive::tests::Writer;
    use super::*;
    use proptest::prelude::*;

    fn entry(dump_id: i64, desc: &str, section: i64) -> Entry {
        Entry {
            dump_id,
            desc: Some(desc.into()),
            section,
            ..Entry::default()
        }
    }

    fn toc(encoding: &str) -> Vec<Entry> {
        vec![
            Entry {
                defn: Some(format!("SET client_encoding = '{encoding}';\n")),
                ..entry(1, "ENCODING", 1)
            },
            Entry {
                defn: Some("SET standard_conforming_strings = 'on';\n".into()),
                ..entry(2, "STDSTRINGS", 1)
            },
            Entry {
                tag: Some("t".into()),
                namespace: Some("public".into()),
                copy_stmt: Some("COPY public.\"T x\" (a, b) FROM stdin;\n".into()),
                had_dumper: true,
                ..entry(10, "TABLE DATA", SECTION_DATA)
            },
            Entry {
                defn: Some("SELECT pg_catalog.setval('public.s', 5, true);\n".into()),
                ..entry(11, "SEQUENCE SET", SECTION_DATA)
            },
            entry(12, "BLOBS", SECTION_DATA),
            entry(13, "INDEX", 4),
        ]
    }

    #[test]
    fn the_plan_follows_the_table_of_contents() {
        let plan = Plan::new(&toc("UTF8")).expect("a plan");
        assert!(
            plan.settings
                .sql
                .contains("SET client_encoding = 'UTF8';\n")
        );
        assert!(
            plan.settings
                .sql
                .contains("SET standard_conforming_strings = 'on';\n")
        );
        assert!(
            plan.settings
                .sql
                .contains("set_config('search_path', '', false)")
        );
        assert!(plan.settings.sql.contains("SET row_security = off;"));
        assert_eq!(
            plan.sequences,
            "SELECT pg_catalog.setval('public.s', 5, true);\n"
        );
        let copy = &plan.tables[&10];
        assert_eq!(copy.statement, "COPY public.\"T x\" (a, b) FROM stdin;");
        assert_eq!(copy.key, Some(("public".into(), "T x".into())));
        assert_eq!(plan.tables.len(), 1);
    }

    #[test]
    fn other_encodings_and_data_entries_go_to_pg_restore() {
        let reason = Plan::new(&toc("LATIN1")).err().expect("refused");
        assert!(reason.contains("LATIN1"), "{reason}");

        let mut inserts = toc("UTF8");
        inserts[2].copy_stmt = None;
        let reason = Plan::new(&inserts).err().expect("refused");
        assert!(reason.contains("--inserts"), "{reason}");

        let mut other = toc("UTF8");
        other.push(entry(14, "SOMETHING NEW", SECTION_DATA));
        let reason = Plan::new(&other).err().expect("refused");
        assert!(reason.contains("SOMETHING NEW"), "{reason}");

        let mut no_encoding = toc("UTF8");
        no_encoding.remove(0);
        assert!(Plan::new(&no_encoding).is_err());
    }

    #[test]
    fn only_a_trailing_marker_line_is_a_marker() {
        assert_eq!(marker_at_end(b"1\tx\n\\.\n\n\n"), Some(4));
        assert_eq!(marker_at_end(b"\\.\n"), Some(0));
        assert_eq!(marker_at_end(b"1\tx\n"), None);
        assert_eq!(marker_at_end(b"1\tx\n\\."), None);
        // An escaped backslash before a dot ends a row, not a marker line.
        assert_eq!(marker_at_end(b"a\\\\.\n"), None);
        assert_eq!(marker_at_end(b"a\\.\n"), None);
        assert_eq!(marker_at_end(b""), None);
    }

    /// A COPY text row: escaped backslashes, `\N`, tabs, dots.
    fn row() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![Just("a"), Just("."), Just("\\\\"), Just("\\N"), Just("\t")],
            0..12,
        )
        .prop_map(|parts| parts.concat())
    }

    proptest! {
        /// Whatever the archive's chunking, the rows come out whole and in
        /// order, in bounded chunks of whole lines, without the end marker.
        #[test]
        fn table_rows_come_out_whole_without_the_marker(
            rows in proptest::collection::vec(row(), 0..150),
            cuts in proptest::collection::vec(0usize..2000, 0..20),
            marker in any::<bool>(),
            chunk in 1usize..300,
        ) {
            let body: String = rows.iter().map(|r| format!("{r}\n")).collect();
            let mut stream = body.clone().into_bytes();
            if marker {
                stream.extend_from_slice(b"\\.\n\n\n");
            }
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
            cuts.push(stream.len());
            cuts.sort_unstable();
            let mut pieces = Vec::new();
            let mut at = 0;
            for c in cuts {
                pieces.push(stream[at..c].to_vec());
                at = c;
            }
            let version = (1, 14, 0);
            let mut w = Writer::new(version, 4);
            w.toc(version, &[]);
            w.data(10, &pieces);
            w.data(11, &[b"next\n".to_vec()]);

            let runtime = tokio::runtime::Builder::new_current_thread().build().expect("a runtime");
            let (chunks, next) = runtime.block_on(async {
                let mut archive = Archive::open(&w.out[..]).await.expect("an archive");
                let copy = Arc::new(CopyTarget {
                    statement: "COPY t FROM stdin;".into(),
                    display: "t".into(),
                    key: None,
                    settings: Arc::new(Settings { generation: 1, sql: String::new() }),
                });
                let (tx, mut rx) = mpsc::channel(10_000);
                assert_eq!(archive.next_block().await.expect("a block"), Some(Block::Data(10)));
                assert!(table_rows(&mut archive, &copy, &tx, chunk).await.expect("rows"));
                drop(tx);
                let mut chunks = Vec::new();
                while let Some(c) = rx.recv().await {
                    chunks.push(c.data);
                }
                let next = archive.next_block().await.expect("a block");
                (chunks, next)
            });
            prop_assert_eq!(next, Some(Block::Data(11)));
            prop_assert_eq!(chunks.concat(), body.as_bytes());
            prop_assert!(!chunks.is_empty());
            let longest = rows.iter().map(String::len).max().unwrap_or(0) + 1;
            for (i, c) in chunks.iter().enumerate() {
                prop_assert!(c.is_empty() || c.ends_with(b"\n"));
                if i + 1 < chunks.len() {
                    prop_assert!(!c.is_empty());
                }
                // Bounded: the chunk size, one archive chunk and one row.
                prop_assert!(c.len() <= chunk + 2005 + longest);
            }
        }
    }
}
