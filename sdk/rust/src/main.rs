//! A creator and a payer, through the client progenitor generates from
//! openapi/openapi-3.0.json, against a live tally server and the fake
//! Stripe: the scenario of sdk/python and sdk/typescript. Run by
//! scripts/sdk.sh, which starts both and passes TALLY_URL, FAKE_STRIPE_URL,
//! ADMIN_TOKEN, CREATOR_TOKEN and PAYER_TOKEN.
//!
//! The server runs with a 1 s earnings hold, a 200 ms settlement sweep and a
//! 10-credit minimum withdrawal; credits are worth $0.10 and the marketplace
//! share is 30 %. Every amount below is exact. Calls and their inputs are
//! the generated client's types; each check compares the typed fields it
//! reads as JSON, so one line can state several.

use std::time::{Duration, Instant};

use futures::TryStreamExt;
use progenitor_client::{Error, ResponseValue};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use tally_sdk_rust::{types, Client};

type Answer<T> = Result<ResponseValue<T>, Error<types::ErrorResponse>>;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
}

/// A client whose requests carry `Authorization: Bearer {token}`.
fn client(token: &str) -> Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let value = format!("Bearer {token}").parse().expect("a header value");
    headers.insert(reqwest::header::AUTHORIZATION, value);
    let http = reqwest::Client::builder().default_headers(headers).build().expect("an HTTP client");
    Client::new_with_client(&env("TALLY_URL"), http)
}

/// The body of a response that must have this status.
fn expect<T>(answer: Answer<T>, status: u16) -> ResponseValue<T> {
    match answer {
        Ok(r) if r.status().as_u16() == status => r,
        Ok(r) => panic!("expected {status}, got {}", r.status()),
        Err(e) => panic!("expected {status}, got {e}"),
    }
}

/// The status and error body of a refused request.
fn refusal<T: std::fmt::Debug>(answer: Answer<T>) -> (u16, types::ErrorBody) {
    match answer {
        Err(Error::ErrorResponse(r)) => (r.status().as_u16(), r.into_inner().error),
        other => panic!("expected an error response, got {other:?}"),
    }
}

fn check(what: &str, got: impl Serialize, want: Value) {
    let got = serde_json::to_value(got).expect("JSON");
    assert_eq!(got, want, "{what}");
    println!("ok  {what} = {got}");
}

/// A request body (or a constrained input) of the generated types, from JSON.
fn body<T: DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).expect("a valid input")
}

/// An `Idempotency-Key` (each operation has its own constrained type).
fn key<T: std::str::FromStr>(text: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    text.parse().expect("a valid key")
}

async fn wait_for<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Some(value) = probe().await {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out waiting for {what}");
}

fn header(r: &ResponseValue<impl Sized>, name: &str) -> Option<String> {
    r.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

#[tokio::main]
async fn main() {
    let admin = client(&env("ADMIN_TOKEN"));
    let creator = client(&env("CREATOR_TOKEN"));
    let payer = client(&env("PAYER_TOKEN"));

    // The price book and a Pro creator organization with a public agent.
    let model_id: types::PutModelModelId = key("sdk-model");
    let model = expect(
        admin.put_model(&model_id, &body(json!({"runtime_infra": "0.3", "provider_cost": "0.0021"}))).await,
        200,
    );
    check("model runtime_infra", &model.runtime_infra, json!("0.3"));
    let org = expect(creator.create_org(&body(json!({"name": "Acme Agents"}))).await, 201).into_inner();
    check("creator's role", &org.role, json!("owner"));
    expect(admin.create_plan_grant(&body(json!({"plan": "pro", "org_id": org.id}))).await, 201);
    let agent = expect(
        creator
            .create_agent(
                &org.id,
                &body(json!({"name": "Research helper", "model": "sdk-model", "visibility": "public",
                             "publisher_addon": "10"})),
            )
            .await,
        201,
    )
    .into_inner();
    check("agent cost per message", &agent.estimated_cost_per_message, json!("10.3"));

    // The payer buys 150 credits by invoice; an operator settles the order.
    let me = expect(payer.get_me().await, 200).into_inner();
    let wallet_id = me.wallet_id.clone();
    let order = expect(
        payer
            .create_top_up(
                &wallet_id,
                &key("rs-top-up-1"),
                &body(json!({"pack_id": "standard", "method": "manual"})),
            )
            .await,
        201,
    )
    .into_inner();
    check(
        "order",
        json!([order.status, order.credits, order.amount_usd, order.checkout_url]),
        json!(["pending", "150", "15.00", null]),
    );
    let balance = |c: &Client| {
        let (c, w) = (c.clone(), wallet_id.clone());
        async move { expect(c.get_wallet(&w).await, 200).into_inner() }
    };
    check("balance before settlement", balance(&payer).await.balance, json!("0"));
    let paid = expect(admin.settle_top_up(&order.id, &key("rs-settle-1")).await, 200).into_inner();
    check("settled order", json!([paid.status, paid.receipt_number]), json!(["paid", 1]));
    check("balance after settlement", balance(&payer).await.balance, json!("150"));

    // The settled order's invoice (its receipt number, gap-free) and its PDF.
    let invoices = expect(payer.list_invoices(&wallet_id, None, None).await, 200).into_inner();
    let invoice = invoices.data.first().expect("the settled order has an invoice");
    let number = format!("TALLY-{}-000001", invoice.issued_at.format("%Y"));
    check(
        "invoice",
        json!([invoices.data.len(), invoice.number, invoice.top_up_id, invoice.total_usd, invoice.tax_usd]),
        json!([1, number, order.id, "15.00", "0.00"]),
    );
    let pdf = expect(payer.get_invoice_pdf(&invoice.id).await, 200);
    let (content_type, disposition) = (header(&pdf, "content-type"), header(&pdf, "content-disposition"));
    let bytes: Vec<u8> = pdf
        .into_inner()
        .into_inner()
        .try_fold(Vec::new(), |mut all, chunk| async move {
            all.extend_from_slice(&chunk);
            Ok(all)
        })
        .await
        .expect("the PDF is read");
    check(
        "invoice PDF",
        json!([content_type, String::from_utf8_lossy(&bytes[..5])]),
        json!(["application/pdf", "%PDF-"]),
    );
    check("invoice PDF size is a real page", bytes.len() > 1_000 && bytes.len() < 500_000, json!(true));
    check("invoice PDF names its number", disposition, json!(format!("inline; filename=\"{number}.pdf\"")));

    // Quote, then two messages (the first one sent twice with the same key).
    let quote = expect(payer.get_quote(&agent.id, None).await, 200).into_inner();
    check(
        "quote",
        json!([
            quote.runtime_infra,
            quote.publisher_addon,
            quote.total,
            quote.balance,
            quote.sufficient,
            quote.free
        ]),
        json!(["0.3", "10", "10.3", "150", true, false]),
    );
    let charge = |k: &'static str| {
        let (payer, agent_id) = (payer.clone(), agent.id.clone());
        async move { payer.create_charge(&agent_id, &key(k), &body(json!({}))).await }
    };
    let first = expect(charge("rs-msg-1").await, 201).into_inner();
    check(
        "first charge",
        json!([first.total, first.balance_after, first.free]),
        json!(["10.3", "139.7", false]),
    );
    let again = expect(charge("rs-msg-1").await, 201);
    check(
        "retry replays the same charge",
        json!([again.id, header(&again, "idempotent-replayed")]),
        json!([first.id, "true"]),
    );
    let second = expect(charge("rs-msg-2").await, 201).into_inner();
    check("second charge", json!([second.total, second.balance_after]), json!(["10.3", "129.4"]));

    // The wallet's history, newest first.
    let history = expect(payer.list_wallet_transactions(&wallet_id, None, None, None, None, None).await, 200)
        .into_inner();
    let rows: Vec<Value> = history.data.iter().map(|t| json!([t.type_, t.amount, t.balance_after])).collect();
    check(
        "history",
        rows,
        json!([["charge", "-10.3", "129.4"], ["charge", "-10.3", "139.7"], ["top_up", "150", "150"]]),
    );
    check("history has_more", history.has_more, json!(false));
    check("charge's transaction", &history.data[0].id, json!(second.transaction_id));

    // Right after the messages the creator cannot withdraw: no payout account
    // yet (the first reason that applies, whether or not the earnings settled).
    let early = expect(creator.get_earnings(&org.id).await, 200).into_inner();
    check(
        "can_withdraw before settlement",
        json!([early.can_withdraw, early.reason, early.min_withdrawal]),
        json!([false, "no_payout_account", "10"]),
    );

    // The creator earns 70 % of the add-ons: 2 x 7 = 14 credits, available after the hold.
    let earnings = wait_for("earnings to settle", || {
        let (creator, org_id) = (creator.clone(), org.id.clone());
        async move {
            let e = expect(creator.get_earnings(&org_id).await, 200).into_inner();
            (e.available == "14").then_some(e)
        }
    })
    .await;
    check(
        "earnings",
        json!([earnings.lifetime_gross, earnings.platform_share, earnings.pending, earnings.available]),
        json!(["20", "6", "0", "14"]),
    );

    // Connect a payout account; the fake Stripe finishes onboarding by webhook.
    let account = expect(creator.connect_payout_account(&org.id).await, 200).into_inner();
    check(
        "onboarding link",
        account
            .onboarding_url
            .as_deref()
            .is_some_and(|u| u.starts_with("https://connect.stripe.test/setup/")),
        json!(true),
    );
    wait_for("payouts to be enabled", || {
        let (creator, org_id) = (creator.clone(), org.id.clone());
        async move {
            let a = expect(creator.get_payout_account(&org_id).await, 200).into_inner();
            a.payouts_enabled.then_some(())
        }
    })
    .await;
    // Settled earnings (14 >= the minimum of 10) and payouts enabled: withdrawable.
    let ready = expect(creator.get_earnings(&org.id).await, 200).into_inner();
    check(
        "can_withdraw after settlement",
        json!([ready.available, ready.can_withdraw, ready.reason]),
        json!(["14", true, null]),
    );

    // All available earnings: 14 credits = $1.40, sent as one Stripe transfer.
    let payout =
        expect(creator.create_payout(&org.id, &key("rs-payout-1"), &body(json!({}))).await, 201).into_inner();
    check("payout", json!([payout.status, payout.amount, payout.usd]), json!(["in_transit", "14", "1.40"]));
    let after = expect(creator.get_earnings(&org.id).await, 200).into_inner();
    check("earnings after payout", json!([after.available, after.in_payout]), json!(["0", "14"]));
    check(
        "can_withdraw after the payout",
        json!([after.can_withdraw, after.reason]),
        json!([false, "below_minimum"]),
    );
    let seen: Vec<Value> = reqwest::get(format!("{}/_fake/requests", env("FAKE_STRIPE_URL")))
        .await
        .expect("the fake Stripe answers")
        .json()
        .await
        .expect("its request list");
    let transfers: Vec<Value> = seen
        .iter()
        .filter(|r| r["path"] == "/v1/transfers")
        .map(|t| {
            json!([
                t["form"]["amount"],
                t["form"]["currency"],
                t["form"]["destination"],
                t["idempotency_key"]
            ])
        })
        .collect();
    check("transfers at Stripe", transfers, json!([["140", "usd", account.account_id, payout.id]]));
    check("transfer id", payout.transfer_id.as_deref().is_some_and(|t| t.starts_with("tr_")), json!(true));

    // Metered messages: the operator prices the model's tokens (2 and 8 credits
    // per million) and a tool (0.5 a call). A hold reserves what the estimate
    // would cost: 0.3 + 100,000 x 2 / 10^6 + 500,000 x 8 / 10^6 + 2 x 0.5 + the
    // add-on 10 = 15.5 credits, taken from the available balance, not the balance.
    let metered = expect(
        admin
            .put_model(
                &model_id,
                &body(json!({"runtime_infra": "0.3", "provider_cost": "0.0021", "input_per_mtok": "2",
                             "output_per_mtok": "8"})),
            )
            .await,
        200,
    );
    check("model token rates", json!([metered.input_per_mtok, metered.output_per_mtok]), json!(["2", "8"]));
    let tool = expect(admin.put_tool(&key("sdk_search"), &body(json!({"price": "0.5"}))).await, 200);
    check("tool price", json!([tool.id, tool.price]), json!(["sdk_search", "0.5"]));
    let usage = |input: u64, output: u64, searches: u64| json!({"input_tokens": input, "output_tokens": output, "tool_calls": {"sdk_search": searches}});
    let amounts = |c: &Client| {
        let b = balance(c);
        async move {
            let w = b.await;
            json!([w.balance, w.held, w.available])
        }
    };
    let hold_for = |k: &'static str| {
        let (payer, agent_id, estimate) = (payer.clone(), agent.id.clone(), usage(100_000, 500_000, 2));
        async move {
            let input = body(json!({"estimate": {"usage": estimate}}));
            expect(payer.create_hold(&agent_id, &key(k), &input).await, 201).into_inner()
        }
    };
    let hold = hold_for("rs-hold-1").await;
    check(
        "hold",
        json!([hold.status, hold.amount, hold.free, hold.wallet_id]),
        json!(["open", "15.5", false, wallet_id]),
    );
    check(
        "wallet while held (balance, held, available)",
        amounts(&payer).await,
        json!(["129.4", "15.5", "113.9"]),
    );

    // The message used less: 0.3 + 0.1 + 0.8 + 0.5 + 10 = 11.7 is charged from the
    // hold and the other 3.8 goes back.
    let captured = expect(
        payer
            .capture_hold(&hold.id, &key("rs-capture-1"), &body(json!({"usage": usage(50_000, 100_000, 1)})))
            .await,
        201,
    );
    check(
        "captured charge (total, held, uncollected, hold_id, balance_after)",
        json!([
            captured.total,
            captured.held,
            captured.uncollected,
            captured.hold_id,
            captured.balance_after
        ]),
        json!(["11.7", "15.5", "0", hold.id, "117.7"]),
    );
    check(
        "capture headers",
        json!([header(&captured, "x-request-cost"), header(&captured, "x-balance-remaining")]),
        json!(["11.7", "117.7"]),
    );
    check("wallet after the capture", amounts(&payer).await, json!(["117.7", "0", "117.7"]));
    let done = expect(payer.get_hold(&hold.id).await, 200);
    check("captured hold", json!([done.status, done.charge_id]), json!(["captured", captured.id]));

    // A second hold, released (the request failed): everything comes back.
    let second_hold = hold_for("rs-hold-2").await;
    check("second hold", json!([second_hold.status, second_hold.amount]), json!(["open", "15.5"]));
    check("wallet while held again", amounts(&payer).await, json!(["117.7", "15.5", "102.2"]));
    let released = expect(payer.release_hold(&second_hold.id, &key("rs-release-1")).await, 200);
    check(
        "released hold",
        json!([released.status, released.amount, released.charge_id]),
        json!(["released", "15.5", null]),
    );
    check("wallet after the release", amounts(&payer).await, json!(["117.7", "0", "117.7"]));

    // An API key for the payer's server: a daily limit of 25 credits (two
    // messages of 10.3), used as the bearer token of its own client.
    let made =
        expect(payer.create_api_key(&body(json!({"name": "rs server", "daily_limit": "25"}))).await, 201)
            .into_inner();
    check(
        "key",
        json!([made.secret.starts_with("tk_live_"), made.prefix, made.wallet_id]),
        json!([true, &made.secret[..16], wallet_id]),
    );
    let keyed = client(&made.secret);
    check("the key acts as the payer", expect(keyed.get_me().await, 200).into_inner().id, json!(me.id));
    for (n, remaining, balance_after) in [(1, "14.7", "107.4"), (2, "4.4", "97.1")] {
        let sent = keyed.create_charge(&agent.id, &key(&format!("rs-key-msg-{n}")), &body(json!({}))).await;
        let sent = expect(sent, 201);
        check(&format!("charge {n} with the key"), &sent.balance_after, json!(balance_after));
        check(
            &format!("key remaining after charge {n}"),
            header(&sent, "x-key-daily-remaining"),
            json!(remaining),
        );
    }
    let (status, error) =
        refusal(keyed.create_charge(&agent.id, &key("rs-key-msg-3"), &body(json!({}))).await);
    check(
        "third charge passes the key's limit",
        json!([status, error.type_, error.api_key_id]),
        json!([429, "spend_limit_exceeded", made.id]),
    );
    let cap = expect(payer.get_api_key(&made.id).await, 200);
    check("key cap state", json!([cap.spent_today, cap.daily_remaining]), json!(["20.6", "4.4"]));
    expect(payer.revoke_api_key(&made.id).await, 200);
    let (status, error) = refusal(keyed.get_me().await);
    check("revoked key", json!([status, error.type_]), json!([401, "api_key_revoked"]));
    check("wallet after the key's charges", amounts(&payer).await, json!(["97.1", "0", "97.1"]));

    // Credit grants: 50 credits valid 30 days ($4 by invoice), then 5
    // promotional credits from the operator. A message draws the promotional
    // credits first, then the 30-day ones (they expire before the lifetime ones).
    let order30 = expect(
        payer
            .create_top_up(
                &wallet_id,
                &key("rs-top-up-2"),
                &body(json!({"pack_id": "starter", "method": "manual", "validity": "30d"})),
            )
            .await,
        201,
    );
    check("30-day order", json!([order30.amount_usd, order30.validity]), json!(["4.00", "30d"]));
    let paid30 = expect(admin.settle_top_up(&order30.id, &key("rs-settle-2")).await, 200);
    let days = paid30.credits_expire_at.zip(paid30.paid_at).map(|(until, from)| (until - from).num_days());
    check("30-day credits expire 30 days after payment", days, json!(30));
    let promo = expect(
        admin
            .create_grant(
                &wallet_id,
                &key("rs-grant-1"),
                &body(json!({"amount": "5", "category": "promotional", "reason": "welcome"})),
            )
            .await,
        201,
    );
    check("promotional grant", json!([promo.grant.remaining, promo.balance_after]), json!(["5", "152.1"]));
    let third = expect(charge("rs-msg-3").await, 201);
    check("charge drawn from grants", json!([third.total, third.balance_after]), json!(["10.3", "141.8"]));
    let grants = expect(payer.list_wallet_grants(&wallet_id, Some(false), None, None).await, 200);
    let rows: Vec<Value> =
        grants.data.iter().map(|g| json!([g.source, g.category, g.amount, g.remaining])).collect();
    check(
        "grants after the charge (newest first)",
        rows,
        json!([
            ["promotion", "promotional", "5", "0"],
            ["top_up", "paid", "50", "44.7"],
            ["top_up", "paid", "150", "97.1"]
        ]),
    );
    let w30 = balance(&payer).await;
    check(
        "wallet credits by category",
        json!([w30.credits.paid, w30.credits.promotional]),
        json!(["141.8", "0"]),
    );
    check("soonest expiring credits", w30.expiring_next.map(|e| e.amount), json!("44.7"));

    // The ledger holds together.
    let report = expect(admin.verify_ledger().await, 200);
    check(
        "ledger verify",
        json!([report.ok, report.ledger_sum, report.breaches.len()]),
        json!([true, "0", 0]),
    );
    println!("rust scenario: passed");
}
