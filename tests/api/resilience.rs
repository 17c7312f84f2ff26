//! Several `tally serve` processes on one database, and kill -9 under load:
//! the ledger stays exact, nothing acknowledged is lost, nothing doubles.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use diesel::prelude::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tally::db::{DbTarget, Manager};

use crate::helpers::{fresh_database, mint, Backend, SECRET};
use tally::stripe::fake::{self as fake, FakeStripe, WEBHOOK_SECRET};

const BIN: &str = env!("CARGO_BIN_EXE_tally");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A `tally serve` process.
struct Server {
    child: Child,
    base: String,
    port: u16,
    env: BTreeMap<String, String>,
}

impl Server {
    async fn start(env: &BTreeMap<String, String>, port: u16) -> Server {
        let mut cmd = Command::new(BIN);
        cmd.arg("serve").env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.env("TALLY_BIND", format!("127.0.0.1:{port}")).stdout(Stdio::null()).stderr(Stdio::null());
        let child = cmd.spawn().expect("tally serve starts");
        let server = Server { child, base: format!("http://127.0.0.1:{port}"), port, env: env.clone() };
        server.wait_ready().await;
        server
    }

    async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if let Ok(r) = client.get(format!("{}/readyz", self.base)).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("server on {} did not become ready", self.base);
    }

    /// kill -9, then start again on the same port.
    async fn crash_and_restart(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().unwrap();
        *self = Server::start(&self.env, self.port).await;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn env_for(url: &str, extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = [
        ("DATABASE_URL", url),
        ("TALLY_JWT_SECRET", SECRET),
        ("TALLY_WORKERS", "2"),
        ("TALLY_DB_POOL_SIZE", "8"),
        ("RUST_LOG", "warn"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in extra {
        env.insert(k.to_string(), v.to_string());
    }
    env
}

fn token(sub: &str, roles: &[&str]) -> String {
    mint(sub, roles, SECRET, None, None, 3600)
}

async fn call(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: &str,
    body: Value,
    key: Option<&str>,
) -> Result<(StatusCode, Value), reqwest::Error> {
    let mut req = client.request(method, url).bearer_auth(token).json(&body);
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    let res = req.send().await?;
    let status = res.status();
    let value = res.json().await.unwrap_or(Value::Null);
    Ok((status, value))
}

/// Provisions, through `base`: a priced model, a Pro creator org with a
/// public agent (add-on 1, 30 % share), and funded payers. Returns the
/// agent id and the payers.
async fn provision(
    client: &reqwest::Client,
    base: &str,
    payers: usize,
    fund: &str,
) -> (String, String, Vec<String>) {
    let op = token("ops", &["admin"]);
    let post = reqwest::Method::POST;
    let (s, _) = call(
        client,
        reqwest::Method::PUT,
        format!("{base}/v1/admin/models/m"),
        &op,
        json!({"runtime_infra": "0.3", "provider_cost": "0.001"}),
        None,
    )
    .await
    .unwrap();
    assert_eq!(s, 200);
    let creator = token("creator", &[]);
    let (_, org) =
        call(client, post.clone(), format!("{base}/v1/orgs"), &creator, json!({"name": "Co"}), None)
            .await
            .unwrap();
    let org_id = org["id"].as_str().unwrap().to_string();
    call(
        client,
        post.clone(),
        format!("{base}/v1/admin/plan-grants"),
        &op,
        json!({"org_id": org_id, "plan": "pro"}),
        None,
    )
    .await
    .unwrap();
    let (s, agent) = call(
        client,
        post.clone(),
        format!("{base}/v1/orgs/{org_id}/agents"),
        &creator,
        json!({"name": "A", "model": "m", "visibility": "public", "publisher_addon": "1"}),
        None,
    )
    .await
    .unwrap();
    assert_eq!(s, 201, "{agent}");
    let mut names = Vec::new();
    for i in 0..payers {
        let name = format!("payer{i}");
        let (_, me) = call(
            client,
            reqwest::Method::GET,
            format!("{base}/v1/me"),
            &token(&name, &[]),
            Value::Null,
            None,
        )
        .await
        .unwrap();
        let wallet = me["wallet_id"].as_str().unwrap();
        let (s, _) = call(
            client,
            post.clone(),
            format!("{base}/v1/admin/wallets/{wallet}/adjustments"),
            &op,
            json!({"amount": fund, "reason": "fund"}),
            Some(&format!("fund-{name}")),
        )
        .await
        .unwrap();
        assert_eq!(s, 201);
        names.push(name);
    }
    (org_id, agent["id"].as_str().unwrap().to_string(), names)
}

fn pool_for(url: &str) -> tally::db::Pool {
    tally::db::build_pool(Manager::new(DbTarget::parse(url).unwrap(), true), 4).unwrap()
}

fn charge_ids(pool: &tally::db::Pool) -> Vec<String> {
    use tally::db::schema::charges;
    charges::table.select(charges::id).load(&mut pool.get().unwrap()).unwrap()
}

fn assert_ledger_ok(pool: &tally::db::Pool) {
    let report = tally::ledger::verify::verify(&mut pool.get().unwrap()).unwrap();
    assert!(report.ok, "ledger breaches: {:#?}", report.breaches);
}

/// Three instances on one PostgreSQL; charges, a duplicated top-up webhook,
/// settlement sweeps and payout recovery running on all three.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_share_one_postgres() {
    let Some((url, _dir, cleanup)) = fresh_database(Backend::Postgres) else {
        eprintln!("TEST_POSTGRES_URL is not set: multi-instance test skipped");
        return;
    };
    let stripe = FakeStripe::start().await;
    let mut stripe_env = BTreeMap::new();
    stripe.settings(&mut stripe_env);
    let extra: Vec<(&str, &str)> = stripe_env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut extra = extra;
    extra.extend([
        ("TALLY_EARNINGS_HOLD", "1s"),
        ("TALLY_SETTLEMENT_SWEEP", "200ms"),
        ("TALLY_MIN_WITHDRAWAL", "1"),
    ]);
    let env = env_for(&url, &extra);
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(Server::start(&env, free_port()).await);
    }
    let bases: Vec<String> = servers.iter().map(|s| s.base.clone()).collect();
    let client = reqwest::Client::new();
    let (org_id, agent, payers) = provision(&client, &bases[0], 6, "100").await;

    // Charges spread over the three instances; every request is sent twice,
    // to two different instances, with the same key.
    let mut tasks = Vec::new();
    for (p, payer) in payers.iter().enumerate() {
        for i in 0..10 {
            let client = client.clone();
            let (a, b) = (bases[(p + i) % 3].clone(), bases[(p + i + 1) % 3].clone());
            let (agent, tok, key) = (agent.clone(), token(payer, &[]), format!("{payer}-{i}"));
            tasks.push(tokio::spawn(async move {
                let url = |base: &str| format!("{base}/v1/agents/{agent}/charges");
                let first = call(&client, reqwest::Method::POST, url(&a), &tok, json!({}), Some(&key));
                let second = call(&client, reqwest::Method::POST, url(&b), &tok, json!({}), Some(&key));
                let (x, y) = tokio::join!(first, second);
                let mut ids = HashSet::new();
                for (s, body) in [x.unwrap(), y.unwrap()] {
                    assert!(s == 201 || s == 409, "{s} {body}");
                    if s == 201 {
                        ids.insert(body["id"].as_str().unwrap().to_string());
                    }
                }
                assert!(ids.len() <= 1, "one key, one charge: {ids:?}");
                // Resolve a 409 pair by retrying until the first completes.
                loop {
                    let (s, body) =
                        call(&client, reqwest::Method::POST, url(&a), &tok, json!({}), Some(&key))
                            .await
                            .unwrap();
                    if s == 201 {
                        return body["id"].as_str().unwrap().to_string();
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }));
        }
    }
    // Meanwhile a top-up confirmed by one event delivered to all three at once.
    let owner = token("payer0", &[]);
    let (_, me) =
        call(&client, reqwest::Method::GET, format!("{}/v1/me", bases[0]), &owner, Value::Null, None)
            .await
            .unwrap();
    let wallet = me["wallet_id"].as_str().unwrap().to_string();
    let (s, top_up) = call(
        &client,
        reqwest::Method::POST,
        format!("{}/v1/wallets/{wallet}/top-ups", bases[1]),
        &owner,
        json!({"pack_id": "starter"}),
        Some("topup-1"),
    )
    .await
    .unwrap();
    assert_eq!(s, 201, "{top_up}");
    let top_up_id = top_up["id"].as_str().unwrap();
    let event = fake::event(
        "evt_multi",
        "checkout.session.completed",
        fake::session_event_object("cs_test_fake1", top_up_id, 500, "paid", "pi_fake1"),
    );
    let deliveries = bases.iter().map(|b| {
        client
            .post(format!("{b}/v1/webhooks/stripe"))
            .header("Stripe-Signature", fake::signature(&event, WEBHOOK_SECRET, 0))
            .body(event.clone())
            .send()
    });
    for r in futures_util::future::join_all(deliveries).await {
        assert_eq!(r.unwrap().status(), 200);
    }
    let mut acknowledged = Vec::new();
    for t in tasks {
        acknowledged.push(t.await.unwrap());
    }

    // Payouts: onboard, then leave a payout recorded but unsent (as if its
    // instance died) for the instances' recovery to send.
    let creator = token("creator", &[]);
    let (_, acct) = call(
        &client,
        reqwest::Method::PUT,
        format!("{}/v1/orgs/{org_id}/payout-account", bases[2]),
        &creator,
        Value::Null,
        None,
    )
    .await
    .unwrap();
    let account = acct["account_id"].as_str().unwrap().to_string();
    let upd =
        fake::connect_event("evt_acct", "account.updated", &account, fake::account_object(&account, true));
    client
        .post(format!("{}/v1/webhooks/stripe", bases[0]))
        .header("Stripe-Signature", fake::signature(&upd, WEBHOOK_SECRET, 0))
        .body(upd)
        .send()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await; // hold passes; sweeps settle
    let pool = pool_for(&url);
    let settings = tally::config::Settings::from_values(
        &env.iter().map(|(k, v)| (k.clone(), v.clone())).filter(|(k, _)| k != "RUST_LOG").collect(),
    )
    .unwrap();
    let ctx = tally::services::Ctx {
        settings: std::sync::Arc::new(settings),
        platform: tally::db::write_tx(&mut pool.get().unwrap(), tally::ledger::PlatformAccounts::ensure)
            .unwrap(),
    };
    let caller = tally::services::Caller { id: "creator".into(), operator: false, service: false };
    let request =
        tally::services::idempotency::IdempotentRequest::new("creator", "crashed", "POST", "/x", &json!({}))
            .unwrap();
    let tally::services::idempotency::Claim::Fresh(lease) =
        tally::services::idempotency::claim(&mut pool.get().unwrap(), &request).unwrap()
    else {
        panic!("a new key is claimed")
    };
    let (payout, _) = tally::services::payouts::record_payout(
        &mut pool.get().unwrap(),
        &ctx,
        &caller,
        &org_id,
        None,
        &lease.request_key,
    )
    .unwrap();
    {
        use tally::db::schema::payouts as p;
        diesel::update(p::table.find(&payout.id))
            .set(p::send_lease_until.eq(tally::db::now() - chrono::Duration::seconds(1)))
            .execute(&mut pool.get().unwrap())
            .unwrap();
    }
    let started = Instant::now();
    loop {
        let (_, p) = call(
            &client,
            reqwest::Method::GET,
            format!("{}/v1/payouts/{}", bases[1], payout.id),
            &creator,
            Value::Null,
            None,
        )
        .await
        .unwrap();
        if p["status"] == "in_transit" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "recovery did not send: {p}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Every acknowledged charge is in the ledger exactly once, and nothing else is.
    let ids = charge_ids(&pool);
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(ids.len(), 60);
    assert_eq!(unique.len(), 60);
    assert_eq!(acknowledged.iter().collect::<HashSet<_>>(), unique);
    // The top-up credited once; the payout sent once.
    let (_, t) = call(
        &client,
        reqwest::Method::GET,
        format!("{}/v1/top-ups/{top_up_id}", bases[2]),
        &owner,
        Value::Null,
        None,
    )
    .await
    .unwrap();
    assert_eq!((t["status"].as_str(), t["receipt_number"].as_i64()), (Some("paid"), Some(1)));
    assert_eq!(stripe.requests_to("/v1/transfers").len(), 1);
    // 60 paid messages of 1.3 from 600; +50 for payer0's top-up.
    let balances: Vec<String> = {
        use tally::db::schema::accounts as a;
        let mut rows: Vec<Option<i64>> = a::table
            .filter(a::kind.eq("wallet"))
            .filter(a::owner_type.eq("person"))
            .select(a::balance)
            .load(&mut pool.get().unwrap())
            .unwrap();
        rows.sort();
        rows.into_iter().map(|b| tally::domain::Credits::from_micros(b.unwrap_or(0)).to_string()).collect()
    };
    assert_eq!(balances, vec!["87", "87", "87", "87", "87", "137"]);
    // Each accrual settled once: pending drained, available + in payout = 60 x 0.7.
    {
        use tally::db::schema::earnings_accruals as e;
        let unsettled: i64 =
            e::table.filter(e::settled_at.is_null()).count().get_result(&mut pool.get().unwrap()).unwrap();
        assert_eq!(unsettled, 0);
    }
    assert_eq!(payout.amount, tally::domain::Credits::whole(42));
    assert_ledger_ok(&pool);
    drop(servers);
    drop(pool);
    if let Some((admin, name)) = cleanup {
        use diesel::connection::SimpleConnection;
        let mut c = diesel::PgConnection::establish(&admin).unwrap();
        let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
    }
}

/// kill -9 the server at random moments under charge load; clients retry
/// with their idempotency keys.
async fn crash_under_load(backend: Backend) {
    let Some((url, _dir, cleanup)) = fresh_database(backend) else {
        eprintln!("TEST_POSTGRES_URL is not set: PostgreSQL run skipped");
        return;
    };
    // A short idempotency lease: after a kill, retries take over the
    // claims of requests that died within a second.
    let env = env_for(&url, &[("TALLY_IDEMPOTENCY_LEASE", "1s")]);
    let mut server = Server::start(&env, free_port()).await;
    let base = server.base.clone();
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let (_, agent, payers) = provision(&client, &base, 4, "200").await;

    let per_payer = 150;
    let mut tasks = Vec::new();
    for payer in payers.clone() {
        let (client, base, agent) = (client.clone(), base.clone(), agent.clone());
        tasks.push(tokio::spawn(async move {
            let tok = token(&payer, &[]);
            let mut acknowledged: HashMap<String, String> = HashMap::new();
            let mut interrupted = 0usize;
            for i in 0..per_payer {
                let key = format!("{payer}-{i}");
                let started = Instant::now();
                loop {
                    assert!(started.elapsed() < Duration::from_secs(60), "charge {key} never acknowledged");
                    let res = call(
                        &client,
                        reqwest::Method::POST,
                        format!("{base}/v1/agents/{agent}/charges"),
                        &tok,
                        json!({}),
                        Some(&key),
                    )
                    .await;
                    match res {
                        Ok((s, body)) if s == 201 => {
                            acknowledged.insert(key.clone(), body["id"].as_str().unwrap().to_string());
                            break;
                        }
                        // In flight elsewhere, or the server is restarting.
                        Ok((s, _)) if s == 409 || s.is_server_error() => interrupted += 1,
                        Ok((s, body)) => panic!("{key}: unexpected {s} {body}"),
                        Err(_) => interrupted += 1,
                    }
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
            }
            (acknowledged, interrupted)
        }));
    }
    // Three kills at (pseudo-)random moments, each while clients are still charging.
    let mut seed: u64 = 0x5eed_1234;
    for _ in 0..3 {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        tokio::time::sleep(Duration::from_millis(150 + (seed >> 33) % 400)).await;
        assert!(tasks.iter().any(|t| !t.is_finished()), "the load ended before the kill");
        server.crash_and_restart().await;
    }
    let mut acknowledged = HashMap::new();
    let mut interrupted = 0;
    for t in tasks {
        let (acked, errors) = t.await.unwrap();
        acknowledged.extend(acked);
        interrupted += errors;
    }
    assert!(interrupted > 0, "the kills interrupted no request");
    assert_eq!(acknowledged.len(), payers.len() * per_payer);
    let pool = pool_for(&url);
    let ids = charge_ids(&pool);
    let in_db: HashSet<String> = ids.iter().cloned().collect();
    assert_eq!(ids.len(), in_db.len(), "no charge twice");
    let acked: HashSet<String> = acknowledged.values().cloned().collect();
    assert_eq!(acked, in_db, "every acknowledged charge is in the ledger, and nothing else");
    // Each payer paid exactly 150 x 1.3 of their 200.
    {
        use tally::db::schema::accounts as a;
        let balances: Vec<Option<i64>> = a::table
            .filter(a::kind.eq("wallet"))
            .filter(a::owner_type.eq("person"))
            .select(a::balance)
            .load(&mut pool.get().unwrap())
            .unwrap();
        assert_eq!(balances, vec![Some(5_000_000); 4]);
    }
    assert_ledger_ok(&pool);
    drop(server);
    drop(pool);
    if let Some((admin, name)) = cleanup {
        use diesel::connection::SimpleConnection;
        let mut c = diesel::PgConnection::establish(&admin).unwrap();
        let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_under_load_sqlite() {
    crash_under_load(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_under_load_postgres() {
    crash_under_load(Backend::Postgres).await
}
