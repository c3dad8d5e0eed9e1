//! `dns://NAME:PORT` with an injected resolver (the test does not edit /etc/hosts): one name
//! for replicas on 127.0.0.2 and 127.0.0.3 (same port) finds both, and re-resolution adds and
//! retires replicas without stopping the pool.

use distill_tests::trainer::run_once;
use distill_tests::{TeacherProcess, TempDir, fresh_checkpoint};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use student_trainer::teachers::pool::{Expect, GroupSpec, Pool, PoolOptions, Resolver, Resolving};

/// A resolver whose answer the test changes.
#[derive(Debug, Clone, Default)]
struct Fixed(Arc<Mutex<Vec<SocketAddr>>>);

impl Fixed {
    fn set(&self, addrs: &[SocketAddr]) {
        *self.0.lock().unwrap() = addrs.to_vec();
    }
}

impl Resolver for Fixed {
    fn resolve(&self, host: &str, _port: u16) -> Resolving {
        let addrs = if host == "teachers" {
            self.0.lock().unwrap().clone()
        } else {
            Vec::new()
        };
        Box::pin(async move { Ok(addrs) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_names_find_every_replica_and_follow_changes() {
    let tmp = TempDir::new("replicas-dns");
    let teacher = tmp.path().join("teacher");
    fresh_checkpoint(&teacher, "mlp:32", &[1, 28, 28], 10);
    let a = TeacherProcess::start(&teacher, &["--listen", "127.0.0.2:0"]).await;
    let port = a.addr.port();
    let b = TeacherProcess::start(&teacher, &["--listen", &format!("127.0.0.3:{port}")]).await;
    let (url_a, url_b) = (a.url(), b.url());
    let resolver = Fixed::default();
    resolver.set(&[a.addr, b.addr]);
    let options = PoolOptions {
        prefetch: 2,
        resolve_interval: Duration::from_millis(100),
        ..PoolOptions::default()
    };
    let expect = Expect {
        sample_shape: vec![1, 28, 28],
        num_classes: 10,
        batch_size: 8,
        tokens: false,
        tokenizer_fingerprint: None,
        hint_output: None,
        top_k: 0,
        image_views: false,
    };
    let mut pool = Pool::connect_with(
        vec![GroupSpec {
            name: "teacher".into(),
            weight: 1.0,
            urls: vec![format!("dns://teachers:{port}")],
        }],
        options,
        expect,
        Arc::new(resolver.clone()),
    )
    .await
    .expect("pool");
    assert_eq!(pool.replica_urls(0), [url_a.clone(), url_b.clone()]);
    // Both replicas get work.
    let mut used = std::collections::BTreeSet::new();
    for _ in 0..50 {
        used.extend(run_once(&mut pool).await);
        if used.len() == 2 {
            break;
        }
    }
    assert_eq!(used.len(), 2, "{used:?}");

    // A vanishes from the name: it is retired and gets no more work.
    resolver.set(&[b.addr]);
    let mut retired = false;
    for _ in 0..200 {
        if pool.replica_urls(0) == [url_b.clone()] {
            retired = true;
            break;
        }
        run_once(&mut pool).await;
    }
    assert!(retired, "{:?}", pool.replica_urls(0));
    assert!(run_once(&mut pool).await.iter().all(|r| *r == url_b));

    // A comes back: it is added again and answers.
    resolver.set(&[a.addr, b.addr]);
    let mut back = false;
    for _ in 0..200 {
        if run_once(&mut pool).await.contains(&url_a) {
            back = true;
            break;
        }
    }
    assert!(back, "A never rejoined");
}
