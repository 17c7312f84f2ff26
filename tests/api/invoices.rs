//! Billing profiles, invoices of paid top-ups (JSON and PDF), credit notes
//! of refunds, a wallet's top-ups.

use chrono::Datelike;
use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{assert_error, Backend, TestApp};
use tally::stripe::fake::{self as fake, FakeStripe, WEBHOOK_SECRET};

crate::both!(billing_profiles_are_validated_and_kept_per_owner, org_billing_profile_is_for_owners_and_admins);

const PACKS: &str = r#"[
  {"id": "starter", "name": "Starter", "credits": "50", "price_usd": "5.00"},
  {"id": "standard", "name": "Standard", "credits": "150", "price_usd": "15.00", "bonus_credits": "15",
   "validity": {"30d": "15.00", "lifetime": "20.00"}}
]"#;

/// Runs each `async fn(TestApp)` on both databases with a seller, the
/// packs above and the tax rate table `rates` (`mode` inclusive or
/// exclusive).
macro_rules! both_taxed {
    ($rates:expr, $mode:expr, $($name:ident),* $(,)?) => { $(
        mod $name {
            use super::*;
            async fn go(backend: Backend) {
                let Some(app) = TestApp::spawn_with(backend, |v| {
                    settings(v, $rates, $mode);
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

both_taxed!(
    r#"{"DE": "0.19"}"#,
    "exclusive",
    manual_top_up_invoice_adds_exclusive_tax_and_keeps_the_buyer,
    refunds_issue_credit_notes_in_their_own_sequence,
);
both_taxed!(r#"{"DE": "0.19"}"#, "inclusive", inclusive_tax_is_taken_out_of_the_price_and_shown_in_the_pdf);

fn settings(v: &mut std::collections::BTreeMap<String, String>, rates: &str, mode: &str) {
    v.insert("TALLY_CREDIT_PACKS".into(), PACKS.into());
    v.insert("TALLY_SELLER_NAME".into(), "Tally Test GmbH".into());
    v.insert("TALLY_SELLER_ADDRESS".into(), "Hauptstr. 1; 10115 Berlin; Germany".into());
    v.insert("TALLY_SELLER_TAX_ID".into(), "DE999999999".into());
    v.insert("TALLY_TAX_RATES".into(), rates.into());
    v.insert("TALLY_TAX_MODE".into(), mode.into());
}

fn profile(name: &str, country: &str) -> Value {
    json!({
        "legal_name": name,
        "email": "billing@acme.example",
        "address": {"line1": "Marktplatz 5", "city": "Hamburg", "postal_code": "20095", "country": country},
        "tax_id": {"type": "eu_vat", "value": "DE123456789"}
    })
}

async fn put(app: &TestApp, path: &str, token: &str, body: Value) -> (reqwest::StatusCode, Value) {
    let (s, _, b) = app.send(Method::PUT, path, Some(token), Some(body), None).await;
    (s, b)
}

async fn billing_profiles_are_validated_and_kept_per_owner(app: TestApp) {
    let ada = app.token("ada");
    let (s, b) = app.get("/v1/me/billing-profile", &ada).await;
    assert_error(s, &b, 404, "not_found");
    let (s, b) = put(&app, "/v1/me/billing-profile", &ada, profile("  Ada Lovelace Ltd ", "GB")).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["legal_name"], "Ada Lovelace Ltd", "trimmed");
    assert_eq!(b["address"]["country"], "GB");
    assert_eq!(b["tax_id"], json!({"type": "eu_vat", "value": "DE123456789"}));
    assert!(b["address"].get("line2").is_none());
    let (s, got) = app.get("/v1/me/billing-profile", &ada).await;
    assert_eq!((s.as_u16(), &got), (200, &b));

    // Each refusal is a 4xx with a clear body and changes nothing.
    let long = "x".repeat(201);
    let bad = [
        (profile("Ada", "XX"), 422, "country"),
        (profile("Ada", "gb"), 422, "country"),
        (profile("Ada", "GBR"), 422, "country"),
        (profile(&long, "GB"), 422, "legal_name"),
        (profile("   ", "GB"), 422, "legal_name"),
        (json!({"legal_name": "Ada", "email": "not-an-email"}), 422, "email"),
        (json!({"legal_name": "Ada", "tax_id": {"type": "EU VAT", "value": "1"}}), 422, "tax_id.type"),
        (
            json!({"legal_name": "Ada", "tax_id": {"type": "eu_vat", "value": "9".repeat(51)}}),
            422,
            "tax_id.value",
        ),
        (
            json!({"legal_name": "Ada", "address": {"line1": "a", "city": "b", "country": "GB", "postal_code": "1".repeat(21)}}),
            422,
            "postal_code",
        ),
        (json!({"legal_name": "Ada", "nickname": "x"}), 422, "nickname"),
        (json!({"email": "a@b.example"}), 422, "legal_name"),
    ];
    for (body, status, word) in bad {
        let (s, b) = put(&app, "/v1/me/billing-profile", &ada, body.clone()).await;
        assert_error(s, &b, status, "validation_error");
        assert!(b["error"]["message"].as_str().unwrap().contains(word), "{body}: {b}");
    }
    let (_, after) = app.get("/v1/me/billing-profile", &ada).await;
    assert_eq!(after, got, "refused writes changed nothing");
    // The minimum: a legal name alone.
    let (s, b) = put(&app, "/v1/me/billing-profile", &ada, json!({"legal_name": "Ada"})).await;
    assert_eq!((s.as_u16(), b["legal_name"].as_str(), b.get("address").is_none()), (200, Some("Ada"), true));
    // Another person has their own (none).
    let (s, b) = app.get("/v1/me/billing-profile", &app.token("bob")).await;
    assert_error(s, &b, 404, "not_found");
}

async fn org_billing_profile_is_for_owners_and_admins(app: TestApp) {
    let owner = app.token("olga");
    let (s, org) = app.post("/v1/orgs", &owner, json!({"name": "Acme"})).await;
    assert_eq!(s, 201, "{org}");
    let org_id = org["id"].as_str().unwrap();
    for (user, role) in [("adam", "admin"), ("mia", "member")] {
        let (s, b) = app
            .post(&format!("/v1/orgs/{org_id}/members"), &owner, json!({"user_id": user, "role": role}))
            .await;
        assert_eq!(s, 201, "{b}");
    }
    let path = format!("/v1/orgs/{org_id}/billing-profile");
    let (s, b) = put(&app, &path, &owner, profile("Acme GmbH", "DE")).await;
    assert_eq!((s.as_u16(), b["legal_name"].as_str()), (200, Some("Acme GmbH")), "{b}");
    let (s, b) = put(&app, &path, &app.token("adam"), profile("Acme Holding GmbH", "DE")).await;
    assert_eq!((s.as_u16(), b["legal_name"].as_str()), (200, Some("Acme Holding GmbH")), "{b}");
    let (s, b) = put(&app, &path, &app.token("mia"), profile("Mia's", "DE")).await;
    assert_error(s, &b, 403, "forbidden");
    let (s, b) = app.get(&path, &app.token("mia")).await;
    assert_error(s, &b, 403, "forbidden");
    let (s, b) = put(&app, &path, &app.token("eve"), profile("Eve", "DE")).await;
    assert_error(s, &b, 404, "not_found");
    let (s, b) = app.get(&path, &owner).await;
    assert_eq!((s.as_u16(), b["legal_name"].as_str()), (200, Some("Acme Holding GmbH")));
    // The org's profile is not the owner's own.
    let (s, b) = app.get("/v1/me/billing-profile", &owner).await;
    assert_error(s, &b, 404, "not_found");
}

/// Starts a manual order; returns it.
async fn order(app: &TestApp, token: &str, wallet: &str, body: Value, key: &str) -> Value {
    let (s, _, t) = app
        .send(Method::POST, &format!("/v1/wallets/{wallet}/top-ups"), Some(token), Some(body), Some(key))
        .await;
    assert_eq!(s, 201, "{t}");
    t
}

async fn settle(app: &TestApp, id: &str) -> Value {
    let (s, _, t) = app
        .send(
            Method::POST,
            &format!("/v1/admin/top-ups/{id}/settle"),
            Some(&app.operator_token()),
            None,
            Some(&format!("settle-{id}")),
        )
        .await;
    assert_eq!(s, 200, "{t}");
    t
}

async fn invoices_of(app: &TestApp, token: &str, wallet: &str) -> Vec<Value> {
    let (s, page) = app.get(&format!("/v1/wallets/{wallet}/invoices"), token).await;
    assert_eq!(s, 200, "{page}");
    page["data"].as_array().unwrap().clone()
}

fn year() -> i32 {
    chrono::Utc::now().year()
}

/// The PDF of an invoice and the text in it.
async fn pdf_of(app: &TestApp, token: &str, invoice_id: &str) -> (Vec<u8>, String) {
    let res = app
        .client
        .get(format!("{}/v1/invoices/{invoice_id}/pdf", app.address))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/pdf");
    let bytes = res.bytes().await.unwrap().to_vec();
    assert!(bytes.starts_with(b"%PDF-"), "a PDF document");
    let doc = lopdf::Document::load_mem(&bytes).expect("a PDF lopdf can read");
    let text = doc.extract_text(&[1]).expect("text of page 1");
    (bytes, text)
}

async fn manual_top_up_invoice_adds_exclusive_tax_and_keeps_the_buyer(app: TestApp) {
    let tok = app.token("greta");
    let wallet = app.wallet_of("greta").await;
    let (s, _) = put(&app, "/v1/me/billing-profile", &tok, profile("Greta Handel GmbH", "DE")).await;
    assert_eq!(s, 200);
    // 15.00 + 19% = 17.85 is what the buyer pays.
    let t = order(
        &app,
        &tok,
        &wallet,
        json!({"pack_id": "standard", "validity": "30d", "method": "manual"}),
        "g1",
    )
    .await;
    assert_eq!((t["amount_usd"].as_str(), t["credits"].as_str()), (Some("17.85"), Some("165")));
    let id = t["id"].as_str().unwrap().to_string();
    assert!(invoices_of(&app, &tok, &wallet).await.is_empty(), "no invoice before payment");
    let paid = settle(&app, &id).await;
    assert_eq!(paid["receipt_number"], 1);
    // A later edit of the profile does not change the issued invoice.
    put(&app, "/v1/me/billing-profile", &tok, profile("Greta Renamed AG", "AT")).await;

    let list = invoices_of(&app, &tok, &wallet).await;
    assert_eq!(list.len(), 1);
    let inv = &list[0];
    assert_eq!(inv["number"], format!("TALLY-{}-000001", year()));
    assert_eq!(inv["top_up_id"], id.as_str());
    assert_eq!(inv["wallet_id"], wallet.as_str());
    assert_eq!(
        (inv["subtotal_usd"].as_str(), inv["tax_usd"].as_str(), inv["total_usd"].as_str()),
        (Some("15.00"), Some("2.85"), Some("17.85"))
    );
    assert_eq!(inv["tax"], json!({"source": "rate_table", "rate": "0.19", "inclusive": false}));
    assert_eq!(inv["payment_method"], "manual");
    assert_eq!(inv["currency"], "usd");
    assert_eq!(
        inv["seller"],
        json!({"name": "Tally Test GmbH", "address": "Hauptstr. 1; 10115 Berlin; Germany", "tax_id": "DE999999999"})
    );
    assert_eq!(inv["buyer"], profile("Greta Handel GmbH", "DE"), "the profile when issued");
    assert_eq!(
        inv["line"],
        json!({
            "description": "Standard credit pack (credits valid 30 days)",
            "pack_id": "standard", "credits": "150", "bonus_credits": "15", "validity": "30d"
        })
    );
    assert_eq!(inv["credit_notes"], json!([]));
    let inv_id = inv["id"].as_str().unwrap();
    let (s, one) = app.get(&format!("/v1/invoices/{inv_id}"), &tok).await;
    assert_eq!((s.as_u16(), &one), (200, inv));
    // Nobody else sees it.
    let (s, b) = app.get(&format!("/v1/invoices/{inv_id}"), &app.token("mallory")).await;
    assert_error(s, &b, 404, "not_found");
    let (s, _, b) = app
        .send(Method::GET, &format!("/v1/invoices/{inv_id}/pdf"), Some(&app.token("mallory")), None, None)
        .await;
    assert_error(s, &b, 404, "not_found");
    let (s, b) = app.get(&format!("/v1/wallets/{wallet}/invoices"), &app.token("mallory")).await;
    assert_error(s, &b, 404, "not_found");

    let (bytes, text) = pdf_of(&app, &tok, inv_id).await;
    assert!(bytes.len() > 1000, "{} bytes", bytes.len());
    for needle in [
        format!("TALLY-{}-000001", year()).as_str(),
        "Greta Handel GmbH",
        "USD 17.85",
        "USD 2.85",
        "USD 15.00",
        "Tally Test GmbH",
        "DE123456789",
    ] {
        assert!(text.contains(needle), "'{needle}' not in the PDF text:\n{text}");
    }
    assert!(!text.contains("Renamed"), "{text}");

    // A buyer without a profile: no tax, the wallet as the buyer.
    let bob = app.token("bob");
    let bw = app.wallet_of("bob").await;
    let t = order(&app, &bob, &bw, json!({"pack_id": "starter", "method": "manual"}), "b1").await;
    assert_eq!(t["amount_usd"], "5.00");
    settle(&app, t["id"].as_str().unwrap()).await;
    let list = invoices_of(&app, &bob, &bw).await;
    assert_eq!(list[0]["number"], format!("TALLY-{}-000002", year()));
    assert_eq!(list[0]["buyer"], Value::Null);
    assert_eq!(
        (list[0]["subtotal_usd"].as_str(), list[0]["tax_usd"].as_str(), list[0]["total_usd"].as_str()),
        (Some("5.00"), Some("0.00"), Some("5.00"))
    );
    assert_eq!(list[0]["tax"], json!({"source": "none", "rate": null, "inclusive": true}));
    app.assert_ledger_ok();
}

async fn refund_top_up(app: &TestApp, id: &str, body: Value, key: &str) -> Value {
    let (s, _, b) = app
        .send(
            Method::POST,
            &format!("/v1/admin/top-ups/{id}/refund"),
            Some(&app.operator_token()),
            Some(body),
            Some(key),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    b
}

async fn refunds_issue_credit_notes_in_their_own_sequence(app: TestApp) {
    let tok = app.token("greta");
    let wallet = app.wallet_of("greta").await;
    put(&app, "/v1/me/billing-profile", &tok, profile("Greta Handel GmbH", "DE")).await;
    let t = order(
        &app,
        &tok,
        &wallet,
        json!({"pack_id": "standard", "validity": "30d", "method": "manual"}),
        "g1",
    )
    .await;
    let id = t["id"].as_str().unwrap().to_string();
    settle(&app, &id).await;
    // Two partial refunds and the rest: 7.00, 3.00, then 7.85.
    refund_top_up(&app, &id, json!({"amount": "7.00", "reason": "goodwill"}), "r1").await;
    refund_top_up(&app, &id, json!({"amount": "3.00", "reason": "more goodwill"}), "r2").await;
    let last = refund_top_up(&app, &id, json!({"reason": "all of it"}), "r3").await;
    assert_eq!(
        (last["amount_usd"].as_str(), last["top_up"]["status"].as_str()),
        (Some("7.85"), Some("refunded"))
    );
    let inv = &invoices_of(&app, &tok, &wallet).await[0];
    // The invoice is unchanged.
    assert_eq!(
        (inv["subtotal_usd"].as_str(), inv["tax_usd"].as_str(), inv["total_usd"].as_str()),
        (Some("15.00"), Some("2.85"), Some("17.85"))
    );
    let notes = inv["credit_notes"].as_array().unwrap();
    let summary: Vec<(String, String, String, String)> = notes
        .iter()
        .map(|n| {
            assert_eq!(n["invoice_id"], inv["id"]);
            let s = |k: &str| n[k].as_str().unwrap().to_string();
            (s("number"), s("subtotal_usd"), s("tax_usd"), s("total_usd"))
        })
        .collect();
    let y = year();
    // Tax shares of running totals: floor(285*700/1785)=111, floor(285*1000/1785)=159, 285.
    assert_eq!(
        summary,
        vec![
            (format!("TALLY-CN-{y}-000001"), "5.89".into(), "1.11".into(), "7.00".into()),
            (format!("TALLY-CN-{y}-000002"), "2.52".into(), "0.48".into(), "3.00".into()),
            (format!("TALLY-CN-{y}-000003"), "6.59".into(), "1.26".into(), "7.85".into()),
        ]
    );
    assert_eq!(notes[0]["reason"], "refund (manual top-up): goodwill");
    let (_, text) = pdf_of(&app, &tok, inv["id"].as_str().unwrap()).await;
    assert!(text.contains(&format!("TALLY-CN-{y}-000003")), "{text}");
    // Refunds do not use invoice numbers: the next invoice is 2.
    let t = order(&app, &tok, &wallet, json!({"pack_id": "starter", "method": "manual"}), "g2").await;
    settle(&app, t["id"].as_str().unwrap()).await;
    assert_eq!(invoices_of(&app, &tok, &wallet).await[0]["number"], format!("TALLY-{y}-000002"));
    app.assert_ledger_ok();
}

async fn inclusive_tax_is_taken_out_of_the_price_and_shown_in_the_pdf(app: TestApp) {
    let owner = app.token("olga");
    let (_, org) = app.post("/v1/orgs", &owner, json!({"name": "Acme"})).await;
    let (org_id, wallet) = (org["id"].as_str().unwrap(), org["wallet_id"].as_str().unwrap());
    put(&app, &format!("/v1/orgs/{org_id}/billing-profile"), &owner, profile("Acme GmbH", "DE")).await;
    let t = order(&app, &owner, wallet, json!({"pack_id": "starter", "method": "manual"}), "o1").await;
    assert_eq!(t["amount_usd"], "5.00", "the price includes the tax");
    settle(&app, t["id"].as_str().unwrap()).await;
    // A member may read the org wallet's invoices.
    app.post(&format!("/v1/orgs/{org_id}/members"), &owner, json!({"user_id": "mia"})).await;
    let inv = &invoices_of(&app, &app.token("mia"), wallet).await[0];
    // 5.00 / 1.19 = 4.20 (rounded), tax 0.80.
    assert_eq!(
        (inv["subtotal_usd"].as_str(), inv["tax_usd"].as_str(), inv["total_usd"].as_str()),
        (Some("4.20"), Some("0.80"), Some("5.00"))
    );
    assert_eq!(inv["tax"], json!({"source": "rate_table", "rate": "0.19", "inclusive": true}));
    assert_eq!(inv["buyer"]["legal_name"], "Acme GmbH");
    let (_, text) = pdf_of(&app, &owner, inv["id"].as_str().unwrap()).await;
    for needle in ["Acme GmbH", "USD 0.80", "USD 5.00", "Tax (0.19)"] {
        assert!(text.contains(needle), "'{needle}' not in:\n{text}");
    }
}

/// The Stripe tests' settings (beside the fake Stripe): no rate table.
fn stripe_settings(v: &mut std::collections::BTreeMap<String, String>) {
    v.insert("TALLY_CREDIT_PACKS".into(), PACKS.into());
}

crate::both_with_stripe!(stripe_settings;
    stripe_tax_is_shown_and_refunds_of_the_payment_are_credited,
    wallet_top_ups_are_listed_newest_first
);

async fn deliver(app: &TestApp, payload: &str) -> Value {
    let (s, ack) = app.post_event(payload, Some(&fake::signature(payload, WEBHOOK_SECRET, 0))).await;
    assert_eq!(s, 200, "{ack}");
    ack
}

/// A Checkout Session paid for `top_up` whose total Stripe Tax made
/// `subtotal` + `tax` (`added`) or left at `subtotal` (tax included).
fn taxed_session(top_up: &Value, pi: &str, subtotal: i64, tax: i64, added: bool) -> Value {
    let total = if added { subtotal + tax } else { subtotal };
    let mut s =
        fake::session_event_object(&format!("cs_{pi}"), top_up["id"].as_str().unwrap(), total, "paid", pi);
    s["amount_subtotal"] = json!(subtotal);
    s["total_details"] = json!({"amount_discount": 0, "amount_shipping": 0, "amount_tax": tax});
    s
}

async fn stripe_tax_is_shown_and_refunds_of_the_payment_are_credited(app: TestApp, _stripe: FakeStripe) {
    let tok = app.token("sam");
    let wallet = app.wallet_of("sam").await;
    let t = order(&app, &tok, &wallet, json!({"pack_id": "standard", "validity": "30d"}), "s1").await;
    assert_eq!(t["amount_usd"], "15.00");
    // Stripe Tax added 2.85 on top: 17.85 paid, not an amount mismatch.
    let paid =
        fake::event("evt_tax1", "checkout.session.completed", taxed_session(&t, "pi_tax1", 1500, 285, true));
    assert_eq!(deliver(&app, &paid).await["outcome"], "credited");
    assert_eq!(app.balance(&wallet, &tok).await, "165");
    let inv = invoices_of(&app, &tok, &wallet).await[0].clone();
    assert_eq!(
        (inv["subtotal_usd"].as_str(), inv["tax_usd"].as_str(), inv["total_usd"].as_str()),
        (Some("15.00"), Some("2.85"), Some("17.85"))
    );
    assert_eq!(inv["tax"], json!({"source": "stripe", "rate": null, "inclusive": false}));
    assert_eq!((inv["payment_method"].as_str(), inv["buyer"].is_null()), (Some("stripe"), true));
    let (_, text) = pdf_of(&app, &tok, inv["id"].as_str().unwrap()).await;
    assert!(text.contains("Tax (Stripe Tax)") && text.contains("USD 17.85"), "{text}");

    // Half the payment refunded (8.92 of 17.85): half the order (7.49 of
    // 15.00, rounded down) is taken back, and the credit note is exactly
    // what Stripe refunded.
    let refund = |amount_refunded: i64, id: &str| {
        let mut c = fake::charge_object("pi_tax1", 1785, amount_refunded);
        c["amount"] = json!(1785);
        fake::event(id, "charge.refunded", c)
    };
    assert_eq!(deliver(&app, &refund(892, "evt_r1")).await["outcome"], "partially_refunded");
    let top = app.get(&format!("/v1/top-ups/{}", t["id"].as_str().unwrap()), &tok).await.1;
    assert_eq!(top["refunded_usd"], "7.49");
    assert_eq!(deliver(&app, &refund(1785, "evt_r2")).await["outcome"], "refunded");
    let inv = &invoices_of(&app, &tok, &wallet).await[0];
    let notes: Vec<(&str, &str, &str)> = inv["credit_notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["subtotal_usd"].as_str().unwrap(),
                n["tax_usd"].as_str().unwrap(),
                n["total_usd"].as_str().unwrap(),
            )
        })
        .collect();
    // floor(285 * 892 / 1785) = 142.
    assert_eq!(notes, vec![("7.50", "1.42", "8.92"), ("7.50", "1.43", "8.93")]);
    assert_eq!(app.balance(&wallet, &tok).await, "0");

    // Stripe Tax included in the price: the order's amount was paid.
    let t = order(&app, &tok, &wallet, json!({"pack_id": "starter"}), "s2").await;
    let paid =
        fake::event("evt_tax2", "checkout.session.completed", taxed_session(&t, "pi_tax2", 500, 80, false));
    assert_eq!(deliver(&app, &paid).await["outcome"], "credited");
    let inv = &invoices_of(&app, &tok, &wallet).await[0];
    assert_eq!(
        (inv["subtotal_usd"].as_str(), inv["tax_usd"].as_str(), inv["total_usd"].as_str()),
        (Some("4.20"), Some("0.80"), Some("5.00"))
    );
    assert_eq!(inv["tax"]["inclusive"], true);
    // Tax that does not explain the difference is still a mismatch.
    let t = order(&app, &tok, &wallet, json!({"pack_id": "starter"}), "s3").await;
    let mut s = taxed_session(&t, "pi_tax3", 500, 80, true);
    s["amount_total"] = json!(600);
    assert_eq!(
        deliver(&app, &fake::event("evt_tax3", "checkout.session.completed", s)).await["outcome"],
        "amount_mismatch"
    );
    assert_eq!(invoices_of(&app, &tok, &wallet).await.len(), 2, "no invoice for an unsettled payment");
    // A tax above the total (Stripe's example object) is not believed: the
    // payment is credited and invoiced without tax.
    let t = order(&app, &tok, &wallet, json!({"pack_id": "starter"}), "s4").await;
    let mut s = fake::session_event_object("cs_tax4", t["id"].as_str().unwrap(), 500, "paid", "pi_tax4");
    s["total_details"] = fake::fixture("checkout_session")["total_details"].clone();
    assert!(s["total_details"]["amount_tax"].as_i64().unwrap() > 500);
    assert_eq!(
        deliver(&app, &fake::event("evt_tax4", "checkout.session.completed", s)).await["outcome"],
        "credited"
    );
    let inv = &invoices_of(&app, &tok, &wallet).await[0];
    assert_eq!((inv["tax_usd"].as_str(), inv["total_usd"].as_str()), (Some("0.00"), Some("5.00")));
    assert_eq!(inv["tax"]["source"], "none");
    app.assert_ledger_ok();
}

async fn wallet_top_ups_are_listed_newest_first(app: TestApp, _stripe: FakeStripe) {
    let tok = app.token("lena");
    let wallet = app.wallet_of("lena").await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let t =
            order(&app, &tok, &wallet, json!({"pack_id": "starter", "method": "manual"}), &format!("l{i}"))
                .await;
        ids.push(t["id"].as_str().unwrap().to_string());
    }
    settle(&app, &ids[1]).await;
    let path = format!("/v1/wallets/{wallet}/top-ups");
    let page_ids = |v: &Value| -> Vec<String> {
        v["data"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap().to_string()).collect()
    };
    let (s, all) = app.get(&path, &tok).await;
    assert_eq!(s, 200, "{all}");
    assert_eq!(page_ids(&all), vec![ids[2].clone(), ids[1].clone(), ids[0].clone()]);
    let (_, first) = app.get(&format!("{path}?limit=2"), &tok).await;
    assert_eq!(
        (page_ids(&first), first["has_more"].as_bool()),
        (vec![ids[2].clone(), ids[1].clone()], Some(true))
    );
    let (_, rest) = app.get(&format!("{path}?limit=2&starting_after={}", ids[1]), &tok).await;
    assert_eq!((page_ids(&rest), rest["has_more"].as_bool()), (vec![ids[0].clone()], Some(false)));
    let (_, paid) = app.get(&format!("{path}?status=paid"), &tok).await;
    assert_eq!(page_ids(&paid), vec![ids[1].clone()]);
    assert_eq!(paid["data"][0]["receipt_number"], 1);
    let (_, pending) = app.get(&format!("{path}?status=pending"), &tok).await;
    assert_eq!(page_ids(&pending), vec![ids[2].clone(), ids[0].clone()]);
    // Bad input: clear 4xx.
    let (s, b) = app.get(&format!("{path}?status=lost"), &tok).await;
    assert_error(s, &b, 422, "validation_error");
    let (s, b) = app.get(&format!("{path}?limit=0"), &tok).await;
    assert_error(s, &b, 422, "validation_error");
    let (s, b) = app.get(&format!("{path}?starting_after=top_nope"), &tok).await;
    assert_error(s, &b, 404, "not_found");
    let (s, b) = app.get(&path, &app.token("mallory")).await;
    assert_error(s, &b, 404, "not_found");
    // Another wallet's top-up is no cursor here.
    let other = app.wallet_of("otto").await;
    let o = order(&app, &app.token("otto"), &other, json!({"pack_id": "starter", "method": "manual"}), "o1")
        .await;
    let (s, b) = app.get(&format!("{path}?starting_after={}", o["id"].as_str().unwrap()), &tok).await;
    assert_error(s, &b, 404, "not_found");
}
