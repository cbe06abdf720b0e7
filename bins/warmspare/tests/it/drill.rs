//! `warmspare drill`: a recovery point taken with the binary from a real
//! cluster and a `file://` artifact store is rehearsed into scratch
//! targets with the source cluster stopped; a corrupted object in the
//! repository fails the drill, naming the object.

use std::path::{Path, PathBuf};

use serde_json::Value;
use warmspare_testkit::PostgresCluster;

use crate::{Run, file_url, warmspare};

const FILES: &[(&str, &str)] = &[
    (
        "core/nginx/1.25.0/core-nginx-1.25.0-x86_64-linux.hart",
        "nginx",
    ),
    (
        "core/redis/7.0.0/core-redis-7.0.0-x86_64-linux.hart",
        "redis!",
    ),
    ("core/zlib/1.3/core-zlib-1.3-x86_64-linux.hart", "zlib zlib"),
];

async fn run(dir: &Path, env: &[(&str, &str)], code: i32, args: &[&str]) -> Run {
    let run = warmspare(dir, args, env).await;
    run.assert_no_panic();
    assert_eq!(run.code, code, "warmspare {args:?}:\n{run:#?}");
    run
}

fn json(run: &Run) -> Value {
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", run.stdout))
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// Contents of every file under `dir`, for "left alone" assertions.
fn snapshot_tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    files_under(dir)
        .into_iter()
        .map(|p| {
            let body = std::fs::read(&p).expect("read");
            (p, body)
        })
        .collect()
}

/// Flips the bytes of `path`, keeping its length.
fn corrupt(path: &Path) -> Vec<u8> {
    let original = std::fs::read(path).expect("read");
    let bad: Vec<u8> = original.iter().map(|b| b ^ 0x5a).collect();
    std::fs::write(path, &bad).expect("write");
    original
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_rehearses_a_recovery_point_with_the_sites_down() {
    let test_started = std::time::Instant::now();
    let pg = PostgresCluster::start().await.expect("cluster");
    pg.create_database("builder").await.expect("createdb");
    pg.psql_in(
        "builder",
        "CREATE TABLE packages (id int PRIMARY KEY, name text);
         INSERT INTO packages SELECT g, 'p' || g FROM generate_series(1, 7) g;
         CREATE TABLE origins (name text);
         INSERT INTO origins VALUES ('core'), ('chef'), ('habitat');",
    )
    .await
    .expect("fixture");
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path();
    let arts = dir.join("artifacts");
    for (key, body) in FILES {
        let path = arts.join(key);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, body).expect("write");
    }
    let repo = dir.join("repo");
    std::fs::write(
        dir.join("warmspare.toml"),
        format!(
            "site = \"primary\"\n[repository]\nurl = \"{}\"\n\
             [sites.primary]\ndatabase = \"{}\"\nartifacts = \"{}\"\n",
            file_url(&repo),
            pg.url_for("builder"),
            file_url(&arts)
        ),
    )
    .expect("config");
    let bin_dir = pg.bin_dir().display().to_string();
    let env = [("WARMSPARE_PG_BIN_DIR", bin_dir.as_str())];

    let point = json(&run(dir, &env, 0, &["--json", "backup"]).await);
    let point_id = point["id"].as_str().expect("point id").to_owned();
    // The sites are down: the drill reads the repository only.
    pg.stop().await.expect("stop the source cluster");
    let site_store = snapshot_tree(&arts);

    let drill = run(dir, &env, 0, &["--json", "drill"]).await;
    let s = json(&drill);
    assert_eq!(s["ok"], true, "{s:#}");
    assert_eq!(s["point"].as_str(), Some(point_id.as_str()), "{s:#}");
    assert_eq!(s["database"]["database"], "builder", "{s:#}");
    assert_eq!(s["database"]["tables_checked"].as_u64(), Some(2), "{s:#}");
    assert_eq!(s["database"]["rows"].as_u64(), Some(10), "{s:#}");
    assert_eq!(s["artifacts"]["objects"].as_u64(), Some(3), "{s:#}");
    assert_eq!(s["artifacts"]["verified"].as_u64(), Some(3), "{s:#}");
    let bytes: usize = FILES.iter().map(|(_, b)| b.len()).sum();
    assert_eq!(
        s["artifacts"]["bytes"].as_u64(),
        Some(bytes as u64),
        "{s:#}"
    );
    // The point finished after the test began and before the drill did.
    let age = s["data_age_seconds"].as_f64().expect("age");
    assert!(
        age >= 0.0 && age <= test_started.elapsed().as_secs_f64(),
        "{age} {s:#}"
    );
    let rto = s["rto_seconds"].as_f64().expect("rto");
    let halves = s["database"]["seconds"].as_f64().expect("db seconds")
        + s["artifacts"]["seconds"]
            .as_f64()
            .expect("artifact seconds");
    assert!(rto > 0.0 && rto >= halves, "{rto} {halves} {s:#}");
    assert_eq!(s["removed"], true, "{s:#}");
    let scratch = PathBuf::from(s["dir"].as_str().expect("dir"));
    assert!(!scratch.exists(), "{} left behind", scratch.display());
    for step in [
        "drill: recovering recovery point",
        "database half",
        "artifact half",
    ] {
        assert!(drill.stderr.contains(step), "{step}: {}", drill.stderr);
    }
    assert_eq!(
        snapshot_tree(&arts),
        site_store,
        "the site's store was touched"
    );

    // The same point by id, in human form.
    let human = run(dir, &env, 0, &["drill", &point_id]).await;
    assert!(human.stdout.contains("measured RTO"), "{human:#?}");
    assert!(human.stdout.contains("3 objects"), "{human:#?}");

    // --keep: the cluster keeps running and the store stays, until stopped.
    let kept = run(dir, &env, 0, &["--json", "drill", "--keep"]).await;
    let k = json(&kept);
    let kept_dir = PathBuf::from(k["dir"].as_str().expect("dir"));
    // Stop the kept server before any assertion can fail.
    let stop = kept
        .stderr
        .lines()
        .find_map(|l| l.split_once("stop it: ").map(|(_, cmd)| cmd.to_owned()))
        .unwrap_or_else(|| panic!("no stop command in:\n{}", kept.stderr));
    let stopped = std::process::Command::new("sh")
        .args(["-c", &stop])
        .output()
        .expect("sh runs");
    // The three artifacts, and the store's sync state under .warmspare/.
    let restored = files_under(&kept_dir.join("artifacts"));
    std::fs::remove_dir_all(&kept_dir).expect("remove the kept dir");
    assert!(stopped.status.success(), "{stop}: {stopped:?}");
    assert_eq!(
        (k["kept"].as_bool(), k["removed"].as_bool()),
        (Some(true), Some(false))
    );
    let artifacts = restored
        .iter()
        .filter(|p| !p.to_string_lossy().contains("/.warmspare/"))
        .count();
    assert_eq!(artifacts, 3, "{restored:?}");

    // A corrupted artifact blob: the artifact half fails, naming it.
    let blob = files_under(&repo.join("blobs"))
        .into_iter()
        .next()
        .expect("a blob");
    let blob_name = blob
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let original = corrupt(&blob);
    let failed = run(dir, &env, 1, &["--json", "drill"]).await;
    let f = json(&failed);
    assert_eq!(f["ok"], false, "{f:#}");
    assert_eq!(f["failed_step"], "artifacts", "{f:#}");
    let error = f["error"].as_str().expect("error");
    let named = FILES.iter().any(|(key, _)| error.contains(key)) || error.contains(&blob_name);
    assert!(named, "the error names no object: {error}");
    assert!(
        failed.stderr.contains("FAILED at step artifacts"),
        "{}",
        failed.stderr
    );
    assert_eq!(f["database"]["rows"].as_u64(), Some(10), "{f:#}");
    assert!(!PathBuf::from(f["dir"].as_str().expect("dir")).exists());
    std::fs::write(&blob, original).expect("restore blob");

    // A corrupted dump: the database half fails, naming the object.
    let snapshot_id = f["snapshot"].as_str().expect("snapshot id").to_owned();
    let dump = files_under(&repo.join("snapshots").join(&snapshot_id))
        .into_iter()
        .find(|p| p.to_string_lossy().contains("dump"))
        .unwrap_or_else(|| panic!("no dump under {}", repo.display()));
    corrupt(&dump);
    let failed = run(dir, &env, 1, &["--json", "drill"]).await;
    let f = json(&failed);
    assert_eq!(f["failed_step"], "database", "{f:#}");
    let error = f["error"].as_str().expect("error");
    let dump_name = dump.file_name().expect("name").to_string_lossy();
    assert!(error.contains(dump_name.as_ref()), "{error}");
    assert_eq!(f["artifacts"]["verified"].as_u64(), Some(3), "{f:#}");
    assert!(!PathBuf::from(f["dir"].as_str().expect("dir")).exists());
}

/// A repository holding only a physical snapshot: the drill lays it out in
/// a scratch data directory, starts it with archiving off and lets it
/// replay the WAL archive until it promotes; nothing is archived into the
/// repository by the drill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_recovers_a_physical_snapshot_through_the_wal_archive() {
    use crate::wal::{Archive, switch_and_wait_archived};

    let archive = Archive::new().await;
    let primary = archive.primary().await;
    let base = std::fs::read_to_string(&archive.config).expect("read config");
    let config = archive.dir.path().join("drill.toml");
    std::fs::write(
        &config,
        format!(
            "site = \"primary\"\n[sites.primary]\ndatabase = \"{}\"\n{base}",
            primary.url()
        ),
    )
    .expect("write config");
    let config_arg = config.display().to_string();
    let dir = Path::new("/");
    run(
        dir,
        &[],
        0,
        &["--config", &config_arg, "backup", "db", "--physical"],
    )
    .await;
    primary
        .psql("CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 4)")
        .await
        .expect("rows");
    switch_and_wait_archived(&primary).await;
    primary.stop().await.expect("stop the source cluster");
    let repo = archive.dir.path().join("repo");
    let before = files_under(&repo);
    assert!(
        before.iter().any(|p| p.to_string_lossy().contains("wal")),
        "{before:?}"
    );

    let drill = run(dir, &[], 0, &["--config", &config_arg, "--json", "drill"]).await;
    let s = json(&drill);
    assert_eq!(s["ok"], true, "{s:#}");
    assert_eq!(s["database"]["kind"], "physical", "{s:#}");
    // The rows committed after the snapshot came back through the WAL: the
    // data is as new as the last replayed commit.
    let replayed = s["database"]["replayed_until"].as_str().expect("replayed");
    assert_eq!(s["data_finished"].as_str(), Some(replayed), "{s:#}");
    assert!(s["data_age_seconds"].as_f64().expect("age") >= 0.0, "{s:#}");
    assert!(s["artifacts"].is_null(), "{s:#}");
    assert!(s["point"].is_null(), "{s:#}");
    let detail = s["steps"][1]["detail"].as_str().expect("detail");
    assert!(detail.contains("1 user tables"), "{detail}");
    assert_eq!(s["removed"], true, "{s:#}");
    assert!(!PathBuf::from(s["dir"].as_str().expect("dir")).exists());
    assert_eq!(
        files_under(&repo),
        before,
        "the drill wrote into the repository"
    );
}
