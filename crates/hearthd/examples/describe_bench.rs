//! Prints how long DescribeInstances and a store reopen take over 10,000 stored instances:
//! `cargo run --release -p hearthd --example describe_bench`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hearthd::engine::{HostReport, RegisterImageRequest, RunInstancesRequest, TagSpecification};
use hearthd::filter::Filter;
use hearthd::{Engine, EngineOptions, SqliteStore};

const INSTANCES: usize = 10_000;
const ROUNDS: usize = 20;

fn open(dir: &std::path::Path) -> Engine {
    let store = SqliteStore::open(&dir.join("state.db")).expect("open the store");
    Engine::open(Box::new(store), EngineOptions::new(dir)).expect("load the store")
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn time(mut f: impl FnMut()) -> Duration {
    median(
        (0..ROUNDS)
            .map(|_| {
                let start = Instant::now();
                f();
                start.elapsed()
            })
            .collect(),
    )
}

fn main() {
    let dir = std::env::temp_dir().join(format!("hearthd-bench-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("import")).unwrap();
    std::fs::write(dir.join("import/vmlinux"), b"k").unwrap();
    std::fs::write(dir.join("import/root.img"), b"r").unwrap();
    let engine = Arc::new(open(&dir));
    let host = HostReport {
        host_id: "h-bench".into(),
        availability_zone: "homelab-1a".into(),
        vcpus: 1_000_000,
        memory_mib: 1 << 40,
        agent_version: "bench".into(),
        ..HostReport::default()
    };
    engine.report(&host, &[]).unwrap();
    let image = engine
        .register_image(RegisterImageRequest {
            name: "bench".into(),
            kernel_path: "vmlinux".into(),
            root_image_path: "root.img".into(),
            ..RegisterImageRequest::default()
        })
        .unwrap();
    let start = Instant::now();
    for batch in 0..INSTANCES / 100 {
        engine
            .run_instances(RunInstancesRequest {
                image_id: image.clone(),
                min_count: 100,
                tag_specifications: vec![TagSpecification {
                    resource_type: "instance".into(),
                    tags: vec![("Name".into(), format!("web-{}", batch % 10))],
                }],
                ..RunInstancesRequest::default()
            })
            .unwrap();
    }
    let launch = start.elapsed();

    let all = time(|| {
        let (reservations, _) = engine.describe_instances(&[], &[], 0, "").unwrap();
        assert_eq!(reservations.iter().map(|r| r.instances.len()).sum::<usize>(), INSTANCES);
    });
    let tagged = [
        Filter::new("tag:Name", &["web-3"]),
        Filter::new("instance-state-name", &["pending"]),
    ];
    let filtered = time(|| {
        engine.describe_instances(&[], &tagged, 0, "").unwrap();
    });
    let page = time(|| {
        engine.describe_instances(&[], &[], 1000, "").unwrap();
    });
    drop(engine);
    let reopen = time(|| {
        open(&dir);
    });
    let _ = std::fs::remove_dir_all(&dir);

    println!("| {INSTANCES} instances, median of {ROUNDS} | time |");
    println!("|---|---|");
    println!(
        "| RunInstances, 100 per call (one commit each) | {:.1} ms per call |",
        launch.as_secs_f64() * 1000.0 / 100.0
    );
    println!("| DescribeInstances, all | {:.1} ms |", all.as_secs_f64() * 1000.0);
    println!(
        "| DescribeInstances, tag + state filter | {:.1} ms |",
        filtered.as_secs_f64() * 1000.0
    );
    println!(
        "| DescribeInstances, first page of 1000 | {:.1} ms |",
        page.as_secs_f64() * 1000.0
    );
    println!(
        "| reopen (load every record from SQLite) | {:.1} ms |",
        reopen.as_secs_f64() * 1000.0
    );
}
