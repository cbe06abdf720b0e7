//! Physical snapshots across a timeline switch: a standby fed from the
//! repository is promoted (timeline 2) while its old primary carries on
//! writing on timeline 1, both archiving into the same repository. A
//! snapshot of the promoted server is deep-verified and restored from the
//! timeline-2 WAL and history, never from the diverging timeline-1 WAL
//! stored under the same segment numbers; a snapshot taken before the
//! switch still verifies.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use warmspare_snapshot::physical::{
    PhysicalRestoreOptions, PhysicalVerifyOptions, RecoveryTarget, verify_deep_physical, verify_wal,
};
use warmspare_snapshot::restore_physical;
use warmspare_snapshot::wal::WalFileName;
use warmspare_store::object_store::ObjectStoreExt as _;
use warmspare_store::object_store::path::Path as ObjectPath;
use warmspare_testkit::{PostgresCluster, postgres_scratch_dir};

use crate::wal::{Archive, eventually, switch_and_wait_archived};
use crate::{Run, warmspare};

async fn exists(archive: &Archive, object: &str) -> bool {
    archive
        .repo
        .store()
        .object_store()
        .head(&ObjectPath::from(object))
        .await
        .is_ok()
}

/// Restores `id` into a fresh directory and starts a cluster on it.
async fn start_restored(
    archive: &Archive,
    id: &warmspare_store::SnapshotId,
    options: &PhysicalRestoreOptions,
    extra: &[(&str, &str)],
) -> PostgresCluster {
    let target = tempfile::tempdir().expect("tempdir");
    let data = target.path().join("data");
    restore_physical(&archive.repo, id, &data, options, None)
        .await
        .expect("restore");
    let mut builder = PostgresCluster::builder()
        .from_data_dir(&data)
        .setting("wal_retrieve_retry_interval", "200ms");
    for (name, value) in extra {
        builder = builder.setting(*name, *value);
    }
    builder.start().await.expect("restored cluster starts")
}

async fn wait_promoted(pg: &PostgresCluster, what: &str) {
    eventually(what, Duration::from_secs(60), || async {
        pg.psql("SELECT pg_is_in_recovery()").await.ok().as_deref() == Some("f")
    })
    .await;
}

/// The rows of `t` per phase: `phase:count,...`.
async fn phases(pg: &PostgresCluster) -> String {
    pg.psql(
        "SELECT string_agg(phase || ':' || n, ',' ORDER BY phase) \
         FROM (SELECT phase, count(*) AS n FROM t GROUP BY phase) c",
    )
    .await
    .expect("phases")
}

/// The timeline of the WAL a server writes now.
async fn current_timeline(pg: &PostgresCluster) -> String {
    pg.psql("SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)")
        .await
        .expect("timeline")
}

/// The segment number of a WAL file name (16 MiB segments).
fn segno(name: &str) -> u64 {
    let log = u64::from_str_radix(&name[8..16], 16).expect("log");
    let seg = u64::from_str_radix(&name[16..24], 16).expect("seg");
    (log << 8) | seg
}

async fn cli(archive: &Archive, args: &[&str]) -> Run {
    let mut all = vec![
        "--config",
        archive.config.to_str().expect("utf-8 config path"),
    ];
    all.extend_from_slice(args);
    let run = warmspare(Path::new("/"), &all, &[]).await;
    run.assert_no_panic();
    assert_eq!(run.code, 0, "warmspare {args:?}:\n{run:#?}");
    run
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_verify_replays_a_snapshot_taken_on_a_promoted_timeline() {
    let archive = Archive::new().await;
    let primary = archive.primary().await;
    primary
        .psql(
            "CREATE TABLE t (id serial PRIMARY KEY, phase text NOT NULL); \
             CREATE INDEX t_phase ON t (phase); \
             INSERT INTO t (phase) SELECT 'a-tl1' FROM generate_series(1, 100)",
        )
        .await
        .expect("table");
    let a = archive.physical_backup(&primary).await;
    assert_eq!((a.meta.timeline, a.meta.stop_timeline), (1, 1));

    // A standby fed only from the repository, restored from snapshot A; it
    // keeps the primary's archive_command (postgresql.conf is in the base
    // backup) and archives into the same repository once promoted.
    let standby_options = PhysicalRestoreOptions::new(archive.restore_command()).with_standby(true);
    let promoted = start_restored(&archive, &a.manifest.id, &standby_options, &[]).await;
    primary
        .psql("INSERT INTO t (phase) SELECT 'b-tl1-replayed' FROM generate_series(1, 50)")
        .await
        .expect("insert");
    switch_and_wait_archived(&primary).await;
    eventually(
        "the standby replays the archived WAL",
        Duration::from_secs(60),
        || async {
            promoted
                .psql("SELECT count(*) FROM t WHERE phase = 'b-tl1-replayed'")
                .await
                .ok()
                .as_deref()
                == Some("50")
        },
    )
    .await;

    assert_eq!(
        promoted.psql("SELECT pg_promote()").await.expect("promote"),
        "t"
    );
    wait_promoted(&promoted, "promotion").await;
    assert_eq!(current_timeline(&promoted).await, "00000002");
    eventually(
        "00000002.history archived by the promoted server",
        Duration::from_secs(60),
        || exists(&archive, "wal/00000002.history"),
    )
    .await;
    promoted
        .psql("INSERT INTO t (phase) SELECT 'c-tl2' FROM generate_series(1, 40)")
        .await
        .expect("insert on timeline 2");

    let b = archive.physical_backup(&promoted).await;
    assert_eq!(
        (b.meta.timeline, b.meta.stop_timeline),
        (2, 2),
        "{:?}",
        b.meta
    );
    assert!(b.meta.start_wal.starts_with("00000002"), "{:?}", b.meta);
    // Written after snapshot B: its copies stop at its end.
    promoted
        .psql("INSERT INTO t (phase) SELECT 'd-tl2-after' FROM generate_series(1, 5)")
        .await
        .expect("insert after B");

    // The old primary diverges on timeline 1 until its archived segments
    // cover B's segment numbers: the repository then holds two different
    // histories under the same numbers, and only timeline 2's is B's.
    primary
        .psql("INSERT INTO t (phase) SELECT 'x-tl1-diverged' FROM generate_series(1, 1000)")
        .await
        .expect("diverge");
    let last = segno(&b.meta.stop_wal);
    loop {
        let ended = primary
            .psql(
                "INSERT INTO t (phase) VALUES ('x-tl1-diverged'); \
                 SELECT pg_walfile_name(pg_switch_wal())",
            )
            .await
            .expect("switch");
        if segno(&ended) >= last {
            break;
        }
    }
    switch_and_wait_archived(&primary).await;
    for name in [&b.meta.start_wal, &b.meta.stop_wal] {
        let tl1 = WalFileName::parse(&format!("00000001{}", &name[8..]))
            .expect("name")
            .object_path()
            .to_string();
        assert!(
            exists(&archive, &tl1).await,
            "{tl1} archived by the old primary"
        );
    }

    // Deep verify of B through the CLI: the timeline-2 segments and the
    // timeline's history file are fetched and replayed; the checks pass on
    // exactly the rows B holds.
    let parent = postgres_scratch_dir().expect("scratch dir");
    let scratch = parent.path().display().to_string();
    let run = cli(
        &archive,
        &[
            "--json",
            "verify",
            b.manifest.id.as_str(),
            "--deep",
            "--scratch-dir",
            &scratch,
        ],
    )
    .await;
    let outcome: Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", run.stdout));
    assert_eq!(outcome["ok"], true, "{outcome:#}");
    let deep = &outcome["deep"];
    assert_eq!(
        deep["databases"],
        serde_json::json!(["postgres"]),
        "{outcome:#}"
    );
    assert_eq!(deep["tables_read"], 1, "{outcome:#}");
    // 100 + 50 + 40: the timeline-1 rows replayed before the promotion and
    // the timeline-2 rows; none of the diverged ones, none written after B.
    assert_eq!(deep["rows"], 190, "{outcome:#}");
    assert_eq!(deep["manifest_checked"], true, "{outcome:#}");
    assert!(
        deep["tables_checked"].as_u64().unwrap_or(0) > 1,
        "{outcome:#}"
    );
    assert!(
        deep["indexes_checked"].as_u64().unwrap_or(0) > 2,
        "{outcome:#}"
    );
    // Every segment of B, plus 00000002.history.
    let segments = outcome["wal"]["segments"].as_u64().expect("segments");
    let wal_report = verify_wal(&archive.repo, &b.manifest)
        .await
        .expect("verify_wal");
    assert_eq!(segments, wal_report.segments as u64, "{outcome:#}");
    assert_eq!(deep["wal_files"], segments + 1, "{outcome:#}");
    assert!(
        std::fs::read_dir(parent.path())
            .expect("read_dir")
            .next()
            .is_none(),
        "the scratch directory is gone"
    );

    // A restore of B to its consistency point through `wal fetch`: exactly
    // B's rows, and the history it read shows both timelines.
    let options = PhysicalRestoreOptions::new(archive.restore_command())
        .with_target(RecoveryTarget::Immediate);
    let restored = start_restored(
        &archive,
        &b.manifest.id,
        &options,
        &[("archive_mode", "off")],
    )
    .await;
    wait_promoted(&restored, "the restored copy of B promotes").await;
    assert_eq!(
        phases(&restored).await,
        "a-tl1:100,b-tl1-replayed:50,c-tl2:40",
        "{}",
        restored.log_tail(40)
    );
    assert_eq!(current_timeline(&restored).await, "00000003");
    let history = std::fs::read_to_string(restored.data_dir().join("pg_wal/00000003.history"))
        .expect("00000003.history");
    let parents: Vec<&str> = history
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| l.split('\t').next())
        .collect();
    assert_eq!(parents, ["1", "2"], "{history}");
    assert!(
        restored
            .log_tail(200)
            .contains("restored log file \"00000002.history\""),
        "{}",
        restored.log_tail(60)
    );
    drop(restored);

    // Snapshot A, taken before the switch, still verifies on timeline 1.
    let report = verify_deep_physical(
        &archive.repo,
        &a.manifest.id,
        &PhysicalVerifyOptions::new(primary.bin_dir(), parent.path())
            .with_recovery_timeout(Duration::from_secs(120)),
        None,
    )
    .await
    .expect("deep verify of A");
    assert_eq!((report.tables_read, report.rows), (1, 100), "{report:?}");
    let a_wal = verify_wal(&archive.repo, &a.manifest)
        .await
        .expect("verify_wal");
    assert!(a_wal.is_ok(), "{a_wal:?}");
    assert_eq!(report.wal_files, a_wal.segments, "no history: {report:?}");

    // The sources are untouched.
    assert_eq!(
        phases(&promoted).await,
        "a-tl1:100,b-tl1-replayed:50,c-tl2:40,d-tl2-after:5"
    );
    assert!(phases(&primary).await.contains("x-tl1-diverged"));
}
