//! Credit grants: packs sold with a validity, promotional grants, the
//! drawdown order (promotional, then the soonest expiry, then the oldest),
//! exact expiry under charges and several instances, and holds on grants
//! that expire while they are open.

use std::collections::BTreeMap;
use std::time::Duration;

use diesel::prelude::*;
use futures_util::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::charges::{charge, market};
use crate::helpers::{assert_error, Backend, TestApp};
use crate::holds::{capture, hold, release, wallet_state};
use crate::metered::{balance, platform};

/// `starter` is sold 30 days, 90 days or lifetime; `big` names no validity
/// (lifetime at its price, as before validities existed).
const PACKS: &str = r#"[
  {"id": "starter", "name": "Starter", "credits": "50", "price_usd": "5",
   "validity": {"30d": "5", "90d": "6", "lifetime": "7.5"}},
  {"id": "big", "name": "Big", "credits": "150", "price_usd": "15", "bonus_credits": "15"}
]"#;

macro_rules! both_with_packs {
    ($($name:ident),* $(,)?) => { $(
        mod $name {
            use super::*;
            async fn go(backend: Backend) {
                let Some(app) = TestApp::spawn_with(backend, |v| {
                    v.insert("TALLY_CREDIT_PACKS".into(), PACKS.into());
                    // The tests run the sweeps themselves.
                    v.insert("TALLY_SETTLEMENT_SWEEP".into(), "1h".into());
                }).await else {
                    eprintln!("TEST_POSTGRES_URL is not set: PostgreSQL run skipped");
                    return;
                };
                super::$name(app).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() { go(Backend::Sqlite).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() { go(Backend::Postgres).await }
        }
    )* };
}

both_with_packs!(
    packs_are_sold_with_a_validity_at_its_price,
    charges_draw_promotional_then_the_soonest_expiry_then_lifetime,
    concurrent_charges_across_three_grants_draw_exactly_what_they_charge,
    an_expiry_during_charges_goes_to_breakage_once_and_is_never_drawn_after,
    three_instances_expire_each_grant_once,
    a_hold_keeps_its_reservation_on_a_grant_that_expires,
    a_capture_gives_back_to_the_grants_its_hold_drew_the_last_first,
    a_refund_takes_back_the_top_ups_own_grants_first,
    promotional_grants_are_checked_and_idempotent,
    grants_announce_expiring_a_week_before_and_expired_once,
);

/// Buys `pack` (at `validity`, or the pack's default) as a manual order an
/// operator settles; the paid top-up.
async fn buy(app: &TestApp, user: &str, wallet: &str, pack: &str, validity: Option<&str>) -> Value {
    let mut body = json!({"pack_id": pack, "method": "manual"});
    if let Some(v) = validity {
        body["validity"] = json!(v);
    }
    let key = uuid::Uuid::new_v4().to_string();
    let (s, _, t) = app
        .send(
            Method::POST,
            &format!("/v1/wallets/{wallet}/top-ups"),
            Some(&app.token(user)),
            Some(body),
            Some(&key),
        )
        .await;
    assert_eq!(s, 201, "{t}");
    let id = t["id"].as_str().unwrap();
    let (s, _, t) = app
        .send(
            Method::POST,
            &format!("/v1/admin/top-ups/{id}/settle"),
            Some(&app.operator_token()),
            None,
            Some(&format!("settle-{id}")),
        )
        .await;
    assert_eq!((s, t["status"].as_str()), (StatusCode::OK, Some("paid")), "{t}");
    t
}

/// An operator's promotional grant; the response.
async fn promote(app: &TestApp, wallet: &str, amount: &str, expires_at: Option<String>) -> Value {
    let mut body = json!({"amount": amount, "category": "promotional", "reason": "welcome"});
    if let Some(t) = expires_at {
        body["expires_at"] = json!(t);
    }
    let key = uuid::Uuid::new_v4().to_string();
    let (s, _, g) = app
        .send(
            Method::POST,
            &format!("/v1/admin/wallets/{wallet}/grants"),
            Some(&app.operator_token()),
            Some(body),
            Some(&key),
        )
        .await;
    assert_eq!(s, 201, "{g}");
    g
}

fn in_secs(secs: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::seconds(secs)).to_rfc3339()
}

/// Every grant of the wallet (spent and expired too), oldest first.
async fn grants(app: &TestApp, wallet: &str, token: &str) -> Vec<Value> {
    let (s, page) = app.get(&format!("/v1/wallets/{wallet}/grants?active=false&limit=100"), token).await;
    assert_eq!(s, 200, "{page}");
    let mut all = page["data"].as_array().unwrap().clone();
    all.reverse();
    all
}

/// (source, remaining) of each grant, oldest first.
async fn remaining(app: &TestApp, wallet: &str, token: &str) -> Vec<(String, String)> {
    grants(app, wallet, token)
        .await
        .iter()
        .map(|g| (g["source"].as_str().unwrap().to_string(), g["remaining"].as_str().unwrap().to_string()))
        .collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

/// Sets a grant's expiry straight in the database (validities are days
/// long; the tests need seconds).
fn set_expiry(app: &TestApp, grant: &str, at: chrono::NaiveDateTime) {
    use tally::db::schema::credit_grants as g;
    let n = diesel::update(g::table.filter(g::public_id.eq(grant)))
        .set(g::expires_at.eq(Some(at)))
        .execute(&mut *app.conn())
        .unwrap();
    assert_eq!(n, 1);
}

/// Runs the expiry sweep as `n` instances would, at once; what each expired.
fn sweep_as_instances(app: &TestApp, n: usize) -> Vec<usize> {
    let state = app.state();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                let pool = app.pool.clone();
                let ctx = state.ctx.clone();
                scope.spawn(move || {
                    let mut conn = pool.get().expect("connection");
                    tally::services::grants::expire_due(&mut conn, &ctx).expect("sweep")
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("sweep thread")).collect()
    })
}

/// The draws recorded on a grant: (amount in micro-credits, when).
fn draws_of(app: &TestApp, grant: &str) -> Vec<(i64, chrono::NaiveDateTime)> {
    use tally::db::schema::{credit_grants as g, grant_draws as d};
    d::table
        .inner_join(g::table)
        .filter(g::public_id.eq(grant))
        .select((d::amount, d::created_at))
        .load(&mut *app.conn())
        .unwrap()
}

async fn packs_are_sold_with_a_validity_at_its_price(app: TestApp) {
    let alice = app.token("alice");
    let (s, packs) = app.get("/v1/credit-packs", &alice).await;
    assert_eq!(s, 200);
    let starter = &packs["data"][0];
    assert_eq!(starter["validity"], json!({"30d": "5.00", "90d": "6.00", "lifetime": "7.50"}));
    assert_eq!(
        (starter["default_validity"].as_str(), starter["price_usd"].as_str()),
        (Some("lifetime"), Some("7.50"))
    );
    let big = &packs["data"][1];
    assert_eq!(big["validity"], json!({"lifetime": "15.00"}));

    let wallet = app.wallet_of("alice").await;
    let t = buy(&app, "alice", &wallet, "starter", Some("90d")).await;
    assert_eq!((t["amount_usd"].as_str(), t["validity"].as_str()), (Some("6.00"), Some("90d")));
    let paid_at = chrono::DateTime::parse_from_rfc3339(t["paid_at"].as_str().unwrap()).unwrap();
    let expires = chrono::DateTime::parse_from_rfc3339(t["credits_expire_at"].as_str().unwrap()).unwrap();
    assert_eq!(expires - paid_at, chrono::Duration::days(90));
    let t = buy(&app, "alice", &wallet, "starter", None).await;
    assert_eq!((t["amount_usd"].as_str(), t["validity"].as_str()), (Some("7.50"), Some("lifetime")));
    assert!(t["credits_expire_at"].is_null());

    // The 90-day credits are one paid grant that expires 90 days after it
    // was credited; the lifetime ones never.
    let g = grants(&app, &wallet, &alice).await;
    assert_eq!(g.len(), 2);
    assert_eq!((g[0]["category"].as_str(), g[0]["amount"].as_str()), (Some("paid"), Some("50")));
    assert_eq!(g[0]["expires_at"], t_expiry(&g[0]));
    assert!(g[1]["expires_at"].is_null());
    let (_, w) = app.get(&format!("/v1/wallets/{wallet}"), &alice).await;
    assert_eq!(w["credits"], json!({"paid": "100", "promotional": "0"}));
    assert_eq!(w["expiring_next"]["amount"], "50");

    // Not on sale: 422, nothing ordered.
    let before = app.count("top_ups");
    let (s, _, b) = app
        .send(
            Method::POST,
            &format!("/v1/wallets/{wallet}/top-ups"),
            Some(&alice),
            Some(json!({"pack_id": "big", "validity": "30d", "method": "manual"})),
            Some("bad-validity"),
        )
        .await;
    assert_error(s, &b, 422, "validation_error");
    assert!(b["error"]["message"].as_str().unwrap().contains("on sale: lifetime"), "{b}");
    let (s, _, b) = app
        .send(
            Method::POST,
            &format!("/v1/wallets/{wallet}/top-ups"),
            Some(&alice),
            Some(json!({"pack_id": "starter", "validity": "7d", "method": "manual"})),
            Some("unknown-validity"),
        )
        .await;
    assert_eq!(s.as_u16() / 100, 4, "{b}");
    assert_eq!(app.count("top_ups"), before);
    app.assert_ledger_ok();
}

/// A grant's `expires_at` as given (a helper that makes the assertion above
/// read as "it has one").
fn t_expiry(g: &Value) -> Value {
    assert!(g["expires_at"].is_string(), "{g}");
    g["expires_at"].clone()
}

async fn charges_draw_promotional_then_the_soonest_expiry_then_lifetime(app: TestApp) {
    let (_, agent) = market(&app, "2", "5", 0, "public").await;
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    // Bought in this order: lifetime 150 (+15 bonus), 30-day 50; then a
    // promotional 5 expiring in an hour.
    buy(&app, "alice", &wallet, "big", None).await;
    buy(&app, "alice", &wallet, "starter", Some("30d")).await;
    let promo = promote(&app, &wallet, "5", Some(in_secs(3600))).await;
    assert_eq!(
        (promo["grant"]["category"].as_str(), promo["balance_after"].as_str()),
        (Some("promotional"), Some("220"))
    );
    assert_eq!(
        remaining(&app, &wallet, &alice).await,
        pairs(&[("top_up", "150"), ("top_up_bonus", "15"), ("top_up", "50"), ("promotion", "5")])
    );
    let (_, w) = app.get(&format!("/v1/wallets/{wallet}"), &alice).await;
    assert_eq!(w["credits"], json!({"paid": "200", "promotional": "20"}));
    assert_eq!(w["expiring_next"]["amount"], "5");

    // 7 credits: the expiring promotional 5 first, then 2 of the lifetime
    // bonus (promotional before paid; never-expiring last among them).
    let (s, _, c) = charge(&app, &alice, &agent, json!({}), "m1").await;
    assert_eq!((s.as_u16(), c["total"].as_str()), (201, Some("7")), "{c}");
    assert_eq!(
        remaining(&app, &wallet, &alice).await,
        pairs(&[("top_up", "150"), ("top_up_bonus", "13"), ("top_up", "50"), ("promotion", "0")])
    );
    // 14 more: the bonus's 13, then 1 of the 30-day paid grant (it expires
    // before the lifetime one).
    for i in 0..2 {
        let (s, _, c) = charge(&app, &alice, &agent, json!({}), &format!("m2-{i}")).await;
        assert_eq!(s, 201, "{c}");
    }
    assert_eq!(
        remaining(&app, &wallet, &alice).await,
        pairs(&[("top_up", "150"), ("top_up_bonus", "0"), ("top_up", "49"), ("promotion", "0")])
    );
    let (_, w) = app.get(&format!("/v1/wallets/{wallet}"), &alice).await;
    assert_eq!((w["balance"].as_str(), w["available"].as_str()), (Some("199"), Some("199")));
    assert_eq!(w["credits"], json!({"paid": "199", "promotional": "0"}));
    assert_eq!(w["expiring_next"]["amount"], "49");
    // The active list leaves spent grants out.
    let (_, active) = app.get(&format!("/v1/wallets/{wallet}/grants"), &alice).await;
    let sources: Vec<&str> =
        active["data"].as_array().unwrap().iter().map(|g| g["source"].as_str().unwrap()).collect();
    assert_eq!(sources, vec!["top_up", "top_up"]);
    // The first charge's draws: 5 from the promotion, 2 from the bonus.
    let promo_id = promo["grant"]["id"].as_str().unwrap();
    assert_eq!(draws_of(&app, promo_id).iter().map(|d| d.0).collect::<Vec<_>>(), vec![5_000_000]);
    // Another person cannot read them.
    let (s, b) = app.get(&format!("/v1/wallets/{wallet}/grants"), &app.token("mallory")).await;
    assert_error(s, &b, 404, "not_found");
    app.assert_ledger_ok();
}

async fn concurrent_charges_across_three_grants_draw_exactly_what_they_charge(app: TestApp) {
    let (_, agent) = market(&app, "0.3", "1", 0, "public").await;
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    promote(&app, &wallet, "5", Some(in_secs(3600))).await;
    buy(&app, "alice", &wallet, "starter", Some("30d")).await;
    app.fund(&wallet, "20").await;
    // 75 credits; 64 charges of 1.3 want 83.2: exactly 57 fit (74.1).
    let results = join_all((0..64).map(|i| {
        let (app, alice, agent) = (&app, &alice, &agent);
        async move { charge(app, alice, agent, json!({}), &format!("c{i}")).await.0 }
    }))
    .await;
    let ok = results.iter().filter(|s| **s == 201).count();
    let refused = results.iter().filter(|s| **s == 402).count();
    assert_eq!((ok, refused), (57, 7), "{results:?}");
    assert_eq!(
        remaining(&app, &wallet, &alice).await,
        pairs(&[("promotion", "0"), ("top_up", "0"), ("adjustment", "0.9")])
    );
    assert_eq!(app.balance(&wallet, &alice).await, "0.9");
    // What the grants gave equals what the wallet was charged.
    let drawn: i64 = {
        use tally::db::schema::grant_draws as d;
        d::table.select(d::amount).load::<i64>(&mut *app.conn()).unwrap().iter().sum()
    };
    assert_eq!(drawn, 74_100_000);
    app.assert_ledger_ok();
}

async fn an_expiry_during_charges_goes_to_breakage_once_and_is_never_drawn_after(app: TestApp) {
    // 0.02 a message: the 30-day grant outlives the 2 s to its expiry.
    let (_, agent) = market(&app, "0.01", "0.01", 0, "public").await;
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    buy(&app, "alice", &wallet, "starter", Some("30d")).await;
    app.fund(&wallet, "100").await;
    let expiring = grants(&app, &wallet, &alice).await[0].clone();
    let grant = expiring["id"].as_str().unwrap().to_string();
    let expires_at = tally::db::now() + chrono::Duration::seconds(2);
    set_expiry(&app, &grant, expires_at);
    let breakage = platform(&app).breakage_revenue;
    assert_eq!(balance(&app, breakage), "0");

    // 16 clients charge for 4 s while three instances sweep.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
    let clients = (0..16).map(|c| {
        let (app, alice, agent) = (&app, &alice, &agent);
        async move {
            let mut n = 0;
            while tokio::time::Instant::now() < deadline {
                let (s, _, b) = charge(app, alice, agent, json!({}), &format!("x{c}-{n}")).await;
                assert_eq!(s, 201, "{b}");
                n += 1;
            }
            n
        }
    });
    let sweeper = async {
        let mut expired = 0;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(250)).await;
            expired += tokio::task::block_in_place(|| sweep_as_instances(&app, 3)).iter().sum::<usize>();
        }
        expired
    };
    let (counts, expired) = tokio::join!(join_all(clients), sweeper);
    let charges: i64 = counts.iter().sum();
    assert_eq!(expired, 1, "the grant expired once");
    assert!(charges > 0);

    // Every draw on the grant came before its expiry, but for the expiry's own.
    let draws = draws_of(&app, &grant);
    let (before, at_expiry): (Vec<&(i64, chrono::NaiveDateTime)>, Vec<_>) =
        draws.iter().partition(|(_, t)| *t < expires_at);
    assert_eq!(at_expiry.len(), 1, "{draws:?}");
    let spent: i64 = before.iter().map(|d| d.0).sum();
    let expired_micros = at_expiry[0].0;
    assert_eq!(spent + expired_micros, 50_000_000, "all 50 credits went to charges or to breakage");
    assert_eq!(
        balance(&app, breakage),
        tally::domain::Credits::from_micros(expired_micros).to_string(),
        "the expired remainder is breakage, once"
    );
    let g = grants(&app, &wallet, &alice).await;
    assert_eq!((g[0]["remaining"].as_str(), g[0]["expired"].as_bool()), (Some("0"), Some(true)));
    // The wallet paid every charge: 150 credits less 0.02 each, less the expired remainder.
    let expected = tally::domain::Credits::from_micros(150_000_000 - 20_000 * charges - expired_micros);
    assert_eq!(app.balance(&wallet, &alice).await, expected.to_string());
    // History shows the expiry; the revenue report its breakage.
    let (_, page) = app.get(&format!("/v1/wallets/{wallet}/transactions?type=expiry"), &alice).await;
    assert_eq!(page["data"].as_array().unwrap().len(), 1, "{page}");
    assert_eq!(
        page["data"][0]["amount"].as_str().unwrap(),
        format!("-{}", tally::domain::Credits::from_micros(expired_micros))
    );
    let (s, report) = app
        .get(
            &format!(
                "/v1/admin/reports/revenue?from={}&to={}",
                urlencoding(&in_secs(-600)),
                urlencoding(&in_secs(600))
            ),
            &app.operator_token(),
        )
        .await;
    assert_eq!(s, 200, "{report}");
    assert_eq!(
        report["breakage"].as_str().unwrap(),
        tally::domain::Credits::from_micros(expired_micros).to_string()
    );
    app.assert_ledger_ok();
}

fn urlencoding(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}

async fn three_instances_expire_each_grant_once(app: TestApp) {
    let mut expected_breakage = 0i64;
    let mut expected_promo = 0i64;
    let past = tally::db::now() - chrono::Duration::seconds(1);
    for (i, user) in ["u1", "u2", "u3", "u4"].iter().enumerate() {
        let wallet = app.wallet_of(user).await;
        buy(&app, user, &wallet, "starter", Some("30d")).await;
        let promo = promote(&app, &wallet, &format!("{}", i + 1), Some(in_secs(3600))).await;
        for g in grants(&app, &wallet, &app.token(user)).await {
            set_expiry(&app, g["id"].as_str().unwrap(), past);
        }
        expected_breakage += 50_000_000;
        expected_promo += (i as i64 + 1) * 1_000_000;
        assert_eq!(promo["grant"]["remaining"], format!("{}", i + 1));
    }
    let promotional_expense = platform(&app).promotional_expense;
    let before = balance(&app, promotional_expense);
    assert_eq!(before, "-10");
    let expired = tokio::task::block_in_place(|| sweep_as_instances(&app, 3));
    assert_eq!(expired.iter().sum::<usize>(), 8, "{expired:?}");
    assert_eq!(tokio::task::block_in_place(|| sweep_as_instances(&app, 3)), vec![0, 0, 0]);
    assert_eq!(app.count("journal_entries WHERE kind = 'expiry'"), 8);
    let p = platform(&app);
    assert_eq!(
        balance(&app, p.breakage_revenue),
        tally::domain::Credits::from_micros(expected_breakage).to_string()
    );
    // Promotional remainders go back to what funded them.
    assert_eq!(balance(&app, p.promotional_expense), "0");
    assert_eq!(expected_promo, 10_000_000);
    for user in ["u1", "u2", "u3", "u4"] {
        let wallet = app.wallet_of(user).await;
        assert_eq!(app.balance(&wallet, &app.token(user)).await, "0");
    }
    app.assert_ledger_ok();
}

async fn a_hold_keeps_its_reservation_on_a_grant_that_expires(app: TestApp) {
    let (_, agent) = market(&app, "0.3", "1", 0, "public").await;
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, "10").await;
    let promo = promote(&app, &wallet, "5", Some(in_secs(3600))).await;
    let promo_id = promo["grant"]["id"].as_str().unwrap().to_string();
    // Two holds reserve 4 and 0.5 of the promotional grant (drawn first).
    let (s, h1) =
        hold(&app, &alice, &agent, json!({"estimate": {"amount": "4"}, "expires_in": 3600}), "h1").await;
    assert_eq!(s, 201, "{h1}");
    let (s, h2) =
        hold(&app, &alice, &agent, json!({"estimate": {"amount": "0.5"}, "expires_in": 3600}), "h2").await;
    assert_eq!(s, 201, "{h2}");
    assert_eq!(remaining(&app, &wallet, &alice).await, pairs(&[("adjustment", "10"), ("promotion", "0.5")]));
    // The grant expires: only its unreserved 0.5 leaves (back to
    // promotional_expense); the holds keep what they reserved.
    set_expiry(&app, &promo_id, tally::db::now() - chrono::Duration::seconds(1));
    assert_eq!(tokio::task::block_in_place(|| sweep_as_instances(&app, 2)).iter().sum::<usize>(), 1);
    assert_eq!(balance(&app, platform(&app).promotional_expense), "-4.5");
    assert_eq!(wallet_state(&app, &wallet, &alice).await, ("14.5".into(), "4.5".into(), "10".into()));

    // Capturing the first at 1.3 charges it from the reservation; the 2.7
    // left of it go back to the expired grant and expire with the next sweep.
    let (s, _, c) = capture(&app, &alice, h1["id"].as_str().unwrap(), json!({}), "cap1").await;
    assert_eq!((s.as_u16(), c["total"].as_str(), c["held"].as_str()), (201, Some("1.3"), Some("4")), "{c}");
    assert_eq!(remaining(&app, &wallet, &alice).await, pairs(&[("adjustment", "10"), ("promotion", "2.7")]));
    // Releasing the second gives its 0.5 back to the grant too.
    let (s, r) = release(&app, &alice, h2["id"].as_str().unwrap(), "rel2").await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(remaining(&app, &wallet, &alice).await, pairs(&[("adjustment", "10"), ("promotion", "3.2")]));
    // Those credits cannot be spent: a charge draws the adjustment's.
    let (s, _, c) = charge(&app, &alice, &agent, json!({}), "after").await;
    assert_eq!(s, 201, "{c}");
    assert_eq!(remaining(&app, &wallet, &alice).await, pairs(&[("adjustment", "8.7"), ("promotion", "3.2")]));
    // The next sweep expires them.
    assert_eq!(tokio::task::block_in_place(|| sweep_as_instances(&app, 2)).iter().sum::<usize>(), 1);
    assert_eq!(balance(&app, platform(&app).promotional_expense), "-1.3");
    assert_eq!(wallet_state(&app, &wallet, &alice).await, ("8.7".into(), "0".into(), "8.7".into()));
    app.assert_ledger_ok();
}

/// A capture below its hold gives the rest back to the grants the hold
/// drew from, the last drawn first: from two grants, and from one (on
/// PostgreSQL that one is a single statement).
async fn a_capture_gives_back_to_the_grants_its_hold_drew_the_last_first(app: TestApp) {
    let (_, agent) = market(&app, "0.3", "1", 0, "public").await;
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, "10").await;
    promote(&app, &wallet, "5", Some(in_secs(3600))).await;
    // 7 reserved: the promotional 5 first, then 2 of the adjustment.
    let (s, h) = hold(&app, &alice, &agent, json!({"estimate": {"amount": "7"}}), "two").await;
    assert_eq!(s, 201, "{h}");
    assert_eq!(remaining(&app, &wallet, &alice).await, pairs(&[("adjustment", "8"), ("promotion", "0")]));
    // Captured at 1.3: 5.7 go back, 2 to the adjustment (drawn last), 3.7
    // to the promotion.
    let (s, _, c) = capture(&app, &alice, h["id"].as_str().unwrap(), json!({}), "cap-two").await;
    assert_eq!((s.as_u16(), c["total"].as_str(), c["held"].as_str()), (201, Some("1.3"), Some("7")), "{c}");
    assert_eq!(remaining(&app, &wallet, &alice).await, pairs(&[("adjustment", "10"), ("promotion", "3.7")]));
    assert_eq!(wallet_state(&app, &wallet, &alice).await, ("13.7".into(), "0".into(), "13.7".into()));
    // 2 reserved from the promotion alone; captured at 1.3, 0.7 go back.
    let (s, h) = hold(&app, &alice, &agent, json!({"estimate": {"amount": "2"}}), "one").await;
    assert_eq!(s, 201, "{h}");
    assert_eq!(remaining(&app, &wallet, &alice).await, pairs(&[("adjustment", "10"), ("promotion", "1.7")]));
    let (s, _, c) = capture(&app, &alice, h["id"].as_str().unwrap(), json!({}), "cap-one").await;
    assert_eq!((s.as_u16(), c["total"].as_str()), (201, Some("1.3")), "{c}");
    assert_eq!(remaining(&app, &wallet, &alice).await, pairs(&[("adjustment", "10"), ("promotion", "2.4")]));
    assert_eq!(wallet_state(&app, &wallet, &alice).await, ("12.4".into(), "0".into(), "12.4".into()));
    app.assert_ledger_ok();
}

async fn a_refund_takes_back_the_top_ups_own_grants_first(app: TestApp) {
    let (_, agent) = market(&app, "0.3", "1", 0, "public").await;
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    let big = buy(&app, "alice", &wallet, "big", None).await;
    let starter = buy(&app, "alice", &wallet, "starter", Some("lifetime")).await;
    // 20 charges of 1.3 = 26: the 15 bonus credits first, then 11 of the
    // older paid grant (big's).
    for i in 0..20 {
        let (s, _, c) = charge(&app, &alice, &agent, json!({}), &format!("m{i}")).await;
        assert_eq!(s, 201, "{c}");
    }
    assert_eq!(
        remaining(&app, &wallet, &alice).await,
        pairs(&[("top_up", "139"), ("top_up_bonus", "0"), ("top_up", "50")])
    );
    let refund = |id: String, amount: &'static str, key: &'static str| {
        let app = &app;
        async move {
            app.send(
                Method::POST,
                &format!("/v1/admin/top-ups/{id}/refund"),
                Some(&app.operator_token()),
                Some(json!({"amount": amount, "reason": "asked"})),
                Some(key),
            )
            .await
        }
    };
    // Refunding the starter takes back its own 50 credits, none of big's.
    let (s, _, r) = refund(starter["id"].as_str().unwrap().to_string(), "7.50", "r1").await;
    assert_eq!((s.as_u16(), r["credits_taken_back"].as_str()), (200, Some("50")), "{r}");
    assert_eq!(
        remaining(&app, &wallet, &alice).await,
        pairs(&[("top_up", "139"), ("top_up_bonus", "0"), ("top_up", "0")])
    );
    // Half of big: 75 credits and 7.5 of its (spent) bonus. The credits
    // come from big's paid grant; the bonus, gone from its own grant, from
    // the wallet's other credits (big's paid grant again).
    let (s, _, r) = refund(big["id"].as_str().unwrap().to_string(), "7.50", "r2").await;
    assert_eq!((s.as_u16(), r["credits_taken_back"].as_str()), (200, Some("82.5")), "{r}");
    assert_eq!(
        remaining(&app, &wallet, &alice).await,
        pairs(&[("top_up", "56.5"), ("top_up_bonus", "0"), ("top_up", "0")])
    );
    let (_, w) = app.get(&format!("/v1/wallets/{wallet}"), &alice).await;
    assert_eq!((w["balance"].as_str(), w["frozen"].as_bool()), (Some("56.5"), Some(false)));
    app.assert_ledger_ok();
}

async fn promotional_grants_are_checked_and_idempotent(app: TestApp) {
    let wallet = app.wallet_of("alice").await;
    let op = app.operator_token();
    let post = |body: Value, key: &'static str, token: String| {
        let (app, wallet) = (&app, &wallet);
        async move {
            app.send(
                Method::POST,
                &format!("/v1/admin/wallets/{wallet}/grants"),
                Some(&token),
                Some(body),
                Some(key),
            )
            .await
        }
    };
    let cases: BTreeMap<&str, Value> = [
        ("paid", json!({"amount": "5", "category": "paid", "reason": "x"})),
        ("zero", json!({"amount": "0", "category": "promotional", "reason": "x"})),
        ("negative", json!({"amount": "-5", "category": "promotional", "reason": "x"})),
        ("past", json!({"amount": "5", "category": "promotional", "reason": "x", "expires_at": in_secs(-5)})),
        ("no-reason", json!({"amount": "5", "category": "promotional", "reason": " "})),
    ]
    .into_iter()
    .collect();
    for (key, body) in cases {
        let (s, _, b) = post(body, key, op.clone()).await;
        assert_eq!(s, 422, "{key}: {b}");
    }
    let (s, _, b) =
        post(json!({"amount": "5", "category": "promotional", "reason": "x"}), "member", app.token("alice"))
            .await;
    assert_error(s, &b, 403, "forbidden");
    assert_eq!(app.count("credit_grants"), 0);
    assert_eq!(app.count("journal_entries"), 0);

    let body =
        json!({"amount": "5", "category": "promotional", "reason": "welcome", "expires_at": in_secs(60)});
    let (s, h1, g1) = post(body.clone(), "g1", op.clone()).await;
    assert_eq!(s, 201, "{g1}");
    let (s, h2, g2) = post(body, "g1", op.clone()).await;
    assert_eq!(s, 201);
    assert_eq!(g1, g2);
    assert!(h1.get("idempotent-replayed").is_none());
    assert_eq!(h2.get("idempotent-replayed").unwrap(), "true");
    assert_eq!((app.count("credit_grants"), app.count("journal_entries WHERE kind = 'grant'")), (1, 1));
    assert_eq!(balance(&app, platform(&app).promotional_expense), "-5");
    assert_eq!(app.balance(&wallet, &app.token("alice")).await, "5");
    app.assert_ledger_ok();
}

/// `grant.expiring` once per grant whose credits expire within 7 days (not
/// for one 8 days out, nor a lifetime one), and `grant.expired` once when
/// the sweep expires it, each with the grant as shown.
async fn grants_announce_expiring_a_week_before_and_expired_once(app: TestApp) {
    let ann = app.token("ann");
    let wallet = app.wallet_of("ann").await;
    buy(&app, "ann", &wallet, "big", None).await;
    let later = promote(&app, &wallet, "5", Some(in_secs(8 * 86_400))).await;
    let soon = promote(&app, &wallet, "3", Some(in_secs(6 * 86_400))).await;
    let soon_id = soon["grant"]["id"].as_str().unwrap().to_string();
    let announce = || tally::services::grants::announce_expiring(&mut app.conn()).unwrap();
    assert_eq!(tokio::task::block_in_place(announce), 1);
    assert_eq!(tokio::task::block_in_place(announce), 0, "once per grant");
    let e = crate::events::only(&app, &ann, "grant.expiring").await;
    assert_eq!(e["subject"], json!({"type": "person", "id": "ann", "wallet_id": wallet}));
    let shown = grants(&app, &wallet, &ann).await.into_iter().find(|g| g["id"] == soon_id.as_str()).unwrap();
    assert_eq!(e["data"], shown);
    assert_eq!(
        (e["data"]["remaining"].as_str(), e["data"]["category"].as_str()),
        (Some("3"), Some("promotional"))
    );
    assert!(crate::events::listed(&app, &ann, "grant.expired").await.is_empty());

    // It expires: one `grant.expired` with what expired, by whichever
    // instance expired it.
    set_expiry(&app, &soon_id, tally::db::now() - chrono::Duration::seconds(1));
    let expired = tokio::task::block_in_place(|| sweep_as_instances(&app, 3));
    assert_eq!(expired.iter().sum::<usize>(), 1, "{expired:?}");
    let e = crate::events::only(&app, &ann, "grant.expired").await;
    assert_eq!(
        (e["data"]["id"].as_str(), e["data"]["remaining"].as_str()),
        (Some(soon_id.as_str()), Some("3"))
    );
    assert_eq!(e["data"]["amount"], shown["amount"]);
    assert_eq!(app.balance(&wallet, &ann).await, "170");
    // The grant 8 days out was not announced.
    assert_eq!(crate::events::listed(&app, &ann, "grant.expiring").await.len(), 1);
    assert_eq!(later["grant"]["remaining"], "5");
    app.assert_ledger_ok();
}
