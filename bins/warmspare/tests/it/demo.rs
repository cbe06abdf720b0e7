//! `warmspare demo --json`: the whole loop on one machine, as the README
//! promises it.

use std::path::Path;

use serde_json::Value;

use crate::warmspare;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_every_step_and_cleans_up() {
    let cwd = tempfile::tempdir().expect("tempdir");
    let run = warmspare(cwd.path(), &["demo", "--json"], &[]).await;
    run.assert_no_panic();
    assert_eq!(run.code, 0, "demo failed:\n{}", run.stderr);
    let summary: Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", run.stdout));

    assert_eq!(summary["ok"], true, "{summary:#}");
    let steps = summary["steps"].as_array().expect("steps");
    let names: Vec<&str> = steps.iter().filter_map(|s| s["step"].as_str()).collect();
    for expected in [
        "setup",
        "load",
        "backup",
        "sync",
        "restore",
        "verify",
        "compare_rows",
        "compare_artifacts",
    ] {
        assert!(names.contains(&expected), "no step {expected} in {names:?}");
    }
    for step in steps {
        assert_eq!(step["ok"], true, "step failed: {step:#}");
    }

    let p = &summary["packages"];
    assert_eq!(p["primary_rows"], 300);
    assert_eq!(p["spare_rows"], p["primary_rows"]);
    assert_eq!(p["primary_artifacts"], 300);
    assert_eq!(p["spare_artifacts"], p["primary_artifacts"]);
    assert!(summary["recovery_point"].is_string());

    // The failover step runs when the build has the driver; it is never
    // simulated, so either it measured something or it says it did not run.
    let failover = &summary["failover"];
    if failover["available"] == true {
        assert!(names.contains(&"failover"));
        let rto = failover["rto_seconds"].as_f64().expect("rto");
        let rpo = failover["rpo_seconds"].as_f64().expect("rpo");
        assert!(rto > 0.0 && rto < 30.0, "rto {rto}");
        assert!(rpo > 0.0 && rpo < 60.0, "rpo {rpo}");
        assert!(failover["epoch"].as_u64().expect("epoch") >= 2);
        assert_eq!(failover["spare_rows_after"], 301, "the first write landed");
    } else {
        assert!(!names.contains(&"failover"));
        assert!(run.stderr.contains("failover: not available in this build"));
    }

    let dir = summary["dir"].as_str().expect("dir");
    assert_eq!(summary["kept"], false);
    assert_eq!(summary["removed"], true);
    assert!(!Path::new(dir).exists(), "{dir} is left behind");
    assert!(
        summary["seconds"].as_f64().expect("seconds") < 60.0,
        "the demo must finish in under a minute"
    );
}
