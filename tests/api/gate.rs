//! SQLite: writers wait for their turn at the write gate before they take a
//! pooled connection, so a line of writers never starves readers of
//! connections.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use reqwest::Method;
use serde_json::json;

use crate::charges::{charge, market};
use crate::helpers::{Backend, TestApp};

/// 64 charges queue behind a write transaction held open (so every one of
/// them waits at the gate) while 20 people read `/v1/me`: every read is
/// answered at once, none waits for the pool's 10 s checkout timeout or
/// gets a 503. Once the writer lets go, all 64 charges go through exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiting_writers_do_not_starve_readers() {
    let app = TestApp::spawn(Backend::Sqlite).await.expect("sqlite app");
    let (_, agent) = market(&app, "0.25", "0.75", 0, "public").await;
    let payer = app.token("payer");
    let wallet = app.wallet_of("payer").await;
    app.fund(&wallet, "64").await;
    let readers: Vec<String> = (0..20).map(|i| app.token(&format!("reader-{i}"))).collect();
    for token in &readers {
        let (s, _, b) = app.send(Method::GET, "/v1/me", Some(token), None, None).await;
        assert_eq!(s, 200, "{b}");
    }

    // A writer holds SQLite's write lock and the gate's turn.
    let (holding_tx, holding) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let pool = app.pool.clone();
    let holder = std::thread::spawn(move || {
        let mut conn = pool.get().unwrap();
        tally::db::write_tx(&mut conn, |_| -> diesel::QueryResult<()> {
            holding_tx.send(()).unwrap();
            released.recv().unwrap();
            Ok(())
        })
    });
    holding.recv().unwrap();

    let writers = join_all((0..64).map(|i| {
        let (app, payer, agent) = (&app, payer.clone(), agent.clone());
        async move { charge(app, &payer, &agent, json!({}), &format!("k-{i}")).await.0 }
    }));
    let readers_meanwhile = async {
        // Let the writers reach the gate first.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let started = Instant::now();
        let reads = join_all(readers.iter().map(|token| {
            let app = &app;
            async move {
                let t = Instant::now();
                let (s, _, b) = app.send(Method::GET, "/v1/me", Some(token), None, None).await;
                (s, b, t.elapsed())
            }
        }))
        .await;
        let took = started.elapsed();
        release.send(()).unwrap();
        (reads, took)
    };
    let (statuses, (reads, reads_took)) = tokio::join!(writers, readers_meanwhile);
    holder.join().unwrap().unwrap();

    for (s, b, took) in &reads {
        assert_eq!(*s, 200, "a read while writers queue: {b}");
        assert!(*took < Duration::from_secs(2), "a read waited {took:?} for a connection");
    }
    assert!(reads_took < Duration::from_secs(3), "the reads took {reads_took:?}");
    assert!(statuses.iter().all(|s| *s == 201), "{statuses:?}");
    // 64 charges of 1 credit each: the wallet is empty, exactly.
    assert_eq!(app.balance(&wallet, &payer).await, "0");
    assert!(app.verify().ok);
}
