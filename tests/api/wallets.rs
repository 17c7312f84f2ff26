//! Wallets: limits, history pagination and filters, CSV export.

use std::collections::HashSet;

use futures_util::future::join_all;
use serde_json::json;

use crate::both;
use crate::helpers::TestApp;

both!(
    a_new_person_has_an_empty_wallet,
    spend_limits_are_stored,
    history_pages_newest_first,
    history_filters_and_export
);

async fn a_new_person_has_an_empty_wallet(app: TestApp) {
    let (s, me) = app.get("/v1/me", &app.token("newcomer")).await;
    assert_eq!(s, 200);
    assert_eq!(me["id"], "newcomer");
    assert_eq!(me["plan"], "free");
    assert_eq!(me["orgs"], json!([]));
    let wallet = me["wallet_id"].as_str().unwrap();
    let (_, w) = app.get(&format!("/v1/wallets/{wallet}"), &app.token("newcomer")).await;
    assert_eq!(
        (w["balance"].as_str(), w["usd_value"].as_str(), w["frozen"].as_bool()),
        (Some("0"), Some("0.00"), Some(false))
    );
    // Concurrent first requests provision exactly one person and wallet.
    let tokens: Vec<String> = (0..8).map(|_| app.token("racer")).collect();
    let results = join_all(tokens.iter().map(|t| app.get("/v1/me", t))).await;
    let ids: HashSet<String> = results
        .iter()
        .map(|(s, me)| {
            assert_eq!(*s, 200, "{me}");
            me["wallet_id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(app.count("people"), 2);
}

async fn spend_limits_are_stored(app: TestApp) {
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, "12.345").await;
    let (s, w) = app
        .patch(
            &format!("/v1/wallets/{wallet}"),
            &alice,
            json!({"daily_limit": "20", "weekly_limit": "100.5"}),
        )
        .await;
    assert_eq!(s, 200, "{w}");
    assert_eq!((w["daily_limit"].as_str(), w["weekly_limit"].as_str()), (Some("20"), Some("100.5")));
    assert_eq!((w["balance"].as_str(), w["usd_value"].as_str()), (Some("12.345"), Some("1.23")));
    let (_, w) = app.patch(&format!("/v1/wallets/{wallet}"), &alice, json!({"daily_limit": null})).await;
    assert_eq!((w["daily_limit"].is_null(), w["weekly_limit"].as_str()), (true, Some("100.5")));
    let (_, w) = app.patch(&format!("/v1/wallets/{wallet}"), &alice, json!({})).await;
    assert_eq!((w["daily_limit"].is_null(), w["weekly_limit"].as_str()), (true, Some("100.5")));
    let (_, w) = app.get(&format!("/v1/wallets/{wallet}"), &alice).await;
    assert_eq!(w["weekly_limit"], "100.5");
}

async fn history_pages_newest_first(app: TestApp) {
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    for i in 1..=7 {
        let (s, b) = app.adjust(&wallet, &format!("{i}"), &format!("h{i}")).await;
        assert_eq!(s, 201, "{b}");
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let q = match &cursor {
            Some(c) => format!("?limit=3&starting_after={c}"),
            None => "?limit=3".to_string(),
        };
        let (s, page) = app.get(&format!("/v1/wallets/{wallet}/transactions{q}"), &alice).await;
        assert_eq!(s, 200, "{page}");
        pages += 1;
        let data = page["data"].as_array().unwrap();
        for t in data {
            seen.push((
                t["amount"].as_str().unwrap().to_string(),
                t["balance_after"].as_str().unwrap().to_string(),
            ));
            assert_eq!(t["type"], "adjustment");
            assert_eq!(t["references"]["reason"], "test");
            assert_eq!(t["references"]["actor"], "operator-1");
        }
        if pages == 1 {
            // A new movement between pages does not shift the next page.
            app.fund(&wallet, "100").await;
        }
        if !page["has_more"].as_bool().unwrap() {
            break;
        }
        cursor = Some(data.last().unwrap()["id"].as_str().unwrap().to_string());
    }
    assert_eq!(pages, 3);
    let expected: Vec<(String, String)> = [(7, 28), (6, 21), (5, 15), (4, 10), (3, 6), (2, 3), (1, 1)]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(seen, expected);
}

async fn history_filters_and_export(app: TestApp) {
    let alice = app.token("alice");
    let wallet = app.wallet_of("alice").await;
    app.fund(&wallet, "5").await;
    app.fund(&wallet, "0.000001").await;
    let (s, page) =
        app.get(&format!("/v1/wallets/{wallet}/transactions?type=charge,free_message"), &alice).await;
    assert_eq!((s.as_u16(), page["data"].as_array().unwrap().len()), (200, 0));
    let (_, page) = app.get(&format!("/v1/wallets/{wallet}/transactions?type=adjustment"), &alice).await;
    assert_eq!(page["data"].as_array().unwrap().len(), 2);
    let future = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let past = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let enc = |s: &str| s.replace('+', "%2B");
    let (_, page) =
        app.get(&format!("/v1/wallets/{wallet}/transactions?from={}", enc(&future)), &alice).await;
    assert_eq!(page["data"].as_array().unwrap().len(), 0);
    let (_, page) = app
        .get(&format!("/v1/wallets/{wallet}/transactions?from={}&to={}", enc(&past), enc(&future)), &alice)
        .await;
    assert_eq!(page["data"].as_array().unwrap().len(), 2);
    let (_, page) = app.get(&format!("/v1/wallets/{wallet}/transactions?to={}", enc(&past)), &alice).await;
    assert_eq!(page["data"].as_array().unwrap().len(), 0);

    let res = app
        .client
        .get(format!("{}/v1/wallets/{wallet}/transactions/export", app.address))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("text/csv"));
    let csv = res.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(lines[0].starts_with("id,type,amount,balance_after,created_at"));
    let row: Vec<&str> = lines[1].split(',').collect();
    assert_eq!((row[1], row[2], row[3]), ("adjustment", "0.000001", "5.000001"));
    let row: Vec<&str> = lines[2].split(',').collect();
    assert_eq!((row[1], row[2], row[3]), ("adjustment", "5", "5"));
}
