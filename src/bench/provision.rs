//! Sets up a run through the HTTP API, as an operator, a creator and the
//! payers would: a priced model, a public agent with an add-on, and funded
//! wallets (or one funded organization wallet with many members). `metered`
//! also prices the model's tokens and a tool.

use std::collections::HashMap;

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{stream, StreamExt, TryStreamExt};
use reqwest::Method;
use serde_json::{json, Value};

use super::{Env, Mode};
use crate::domain::money::Credits;

/// Credits per message: runtime infra + add-on = 0.0015.
const RUNTIME_INFRA: &str = "0.0005";
const PUBLISHER_ADDON: &str = "0.001";
/// Funding of each payer: enough for hundreds of millions of charges, so no
/// phase ever runs a wallet dry.
const PAYER_FUNDS: &str = "1000000";
const ORG_FUNDS: &str = "1000000000";
/// `metered`: the model's token rates (credits per million tokens) and the
/// tool the bench's usage calls once per message.
const INPUT_PER_MTOK: &str = "0.15";
const OUTPUT_PER_MTOK: &str = "0.6";
pub const TOOL: &str = "bench_search";
const TOOL_PRICE: &str = "0.01";
/// Provisioning requests in flight at once.
const PARALLEL: usize = 16;

/// Someone who sends charges.
pub struct Payer {
    pub user: String,
    /// `Bearer <jwt>`.
    pub auth: String,
    /// The payer's own wallet (`wal_`; empty for `hot`'s members, who pay
    /// from the organization's), read by `--readers`.
    pub wallet: String,
}

/// What the load needs to know.
pub struct Plan {
    pub agent_id: String,
    /// `hot`: the organization whose wallet pays.
    pub org_id: Option<String>,
    pub payers: Vec<Payer>,
    /// The body of every charge (`{}` or `{"org_id": ...}`).
    pub body: String,
    pub body_value: Value,
    /// `metered`: the bodies of each message's hold and capture.
    pub metered: Option<Metered>,
    /// `history`: the wallet whose history is loaded and paged, and its owner.
    pub history_wallet: Option<String>,
    pub history_auth: Option<String>,
    /// `metered`: what every payer's wallet was funded with.
    pub funded: Option<Credits>,
}

/// A metered message: a hold reserving a worst case (more output tokens),
/// then a capture of what the message used; one tool call in both.
#[derive(Clone)]
pub struct Metered {
    pub hold_body: String,
    pub hold_value: Value,
    pub capture_body: String,
    pub capture_value: Value,
}

/// The usage a hold estimates (output tokens: a `max_tokens` of 4096).
pub fn estimate_usage() -> Value {
    json!({"input_tokens": 1234, "output_tokens": 4096, "tool_calls": {TOOL: 1}})
}

/// The usage each message is captured with.
pub fn final_usage() -> Value {
    json!({"input_tokens": 1234, "output_tokens": 567, "tool_calls": {TOOL: 1}})
}

impl Metered {
    fn new(org_id: Option<&str>) -> Metered {
        let mut hold_value = json!({"estimate": {"usage": estimate_usage()}});
        if let Some(org) = org_id {
            hold_value["org_id"] = json!(org);
        }
        let capture_value = json!({"usage": final_usage()});
        Metered {
            hold_body: hold_value.to_string(),
            hold_value,
            capture_body: capture_value.to_string(),
            capture_value,
        }
    }
}

struct Api {
    client: reqwest::Client,
    base: String,
}

impl Api {
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
        expect: u16,
    ) -> Result<Value> {
        let mut req =
            self.client.request(method.clone(), format!("{}{}", self.base, path)).bearer_auth(token);
        if let Some(b) = body {
            req = req.header("Idempotency-Key", uuid::Uuid::new_v4().to_string()).json(&b);
        }
        let res = req.send().await.with_context(|| format!("{method} {path}"))?;
        let status = res.status().as_u16();
        let text = res.text().await.with_context(|| format!("{method} {path}: reading the answer"))?;
        if status != expect {
            bail!("{method} {path}: expected {expect}, got {status}: {text}");
        }
        serde_json::from_str(&text).with_context(|| format!("{method} {path}: not JSON: {text}"))
    }
}

fn field(v: &Value, name: &str) -> Result<String> {
    v[name].as_str().map(str::to_string).ok_or_else(|| anyhow!("no '{name}' in {v}"))
}

pub async fn provision(env: &Env, mode: Mode, payers: usize) -> Result<Plan> {
    let api = Api {
        client: reqwest::Client::builder().pool_max_idle_per_host(PARALLEL).build()?,
        base: env.base_url.clone(),
    };
    let run = uuid::Uuid::new_v4().simple().to_string();
    let run = &run[..8];
    let operator = env.token("bench-operator", &["admin"])?;
    let creator = env.token("bench-creator", &[])?;

    let mut model = json!({"runtime_infra": RUNTIME_INFRA, "provider_cost": "0.0002"});
    if mode == Mode::Metered {
        model["input_per_mtok"] = json!(INPUT_PER_MTOK);
        model["output_per_mtok"] = json!(OUTPUT_PER_MTOK);
        api.call(
            Method::PUT,
            &format!("/v1/admin/tools/{TOOL}"),
            &operator,
            Some(json!({"price": TOOL_PRICE})),
            200,
        )
        .await?;
    }
    api.call(Method::PUT, "/v1/admin/models/bench-model", &operator, Some(model), 200).await?;
    let creator_org =
        api.call(Method::POST, "/v1/orgs", &creator, Some(json!({"name": "Bench Creator"})), 201).await?;
    let creator_org = field(&creator_org, "id")?;
    // Publishing to the marketplace needs Pro.
    api.call(
        Method::POST,
        "/v1/admin/plan-grants",
        &operator,
        Some(json!({"org_id": creator_org, "plan": "pro"})),
        201,
    )
    .await?;
    let agent = api
        .call(
            Method::POST,
            &format!("/v1/orgs/{creator_org}/agents"),
            &creator,
            Some(json!({"name": "Bench Agent", "model": "bench-model", "visibility": "public",
                        "publisher_addon": PUBLISHER_ADDON, "free_messages": 0})),
            201,
        )
        .await?;
    let agent_id = field(&agent, "id")?;

    let (org_id, people, wallets) = match mode {
        Mode::Hot => {
            let owner = env.token("bench-org-owner", &[])?;
            let org = api
                .call(Method::POST, "/v1/orgs", &owner, Some(json!({"name": "Bench Payers"})), 201)
                .await?;
            let (org_id, wallet) = (field(&org, "id")?, field(&org, "wallet_id")?);
            api.call(
                Method::POST,
                &format!("/v1/admin/wallets/{wallet}/adjustments"),
                &operator,
                Some(json!({"amount": ORG_FUNDS, "reason": "bench funding"})),
                201,
            )
            .await?;
            let members: Vec<String> = (0..payers).map(|i| format!("bench-member-{run}-{i}")).collect();
            let (api_ref, owner_ref, org_ref) = (&api, &owner, &org_id);
            stream::iter(members.iter().map(|user| async move {
                api_ref
                    .call(
                        Method::POST,
                        &format!("/v1/orgs/{org_ref}/members"),
                        owner_ref,
                        Some(json!({"user_id": user})),
                        201,
                    )
                    .await
            }))
            .buffer_unordered(PARALLEL)
            .try_collect::<Vec<_>>()
            .await?;
            (Some(org_id), members, HashMap::new())
        }
        _ => {
            let people: Vec<String> = (0..payers).map(|i| format!("bench-payer-{i}")).collect();
            let (api_ref, op_ref) = (&api, &operator);
            let wallets = stream::iter(people.iter().map(|user| async move {
                let token = env.token(user, &[])?;
                let me = api_ref.call(Method::GET, "/v1/me", &token, None, 200).await?;
                let wallet = field(&me, "wallet_id")?;
                api_ref
                    .call(
                        Method::POST,
                        &format!("/v1/admin/wallets/{wallet}/adjustments"),
                        op_ref,
                        Some(json!({"amount": PAYER_FUNDS, "reason": "bench funding"})),
                        201,
                    )
                    .await?;
                anyhow::Ok((user.clone(), wallet))
            }))
            .buffer_unordered(PARALLEL)
            .try_collect::<HashMap<_, _>>()
            .await?;
            (None, people, wallets)
        }
    };

    let (history_wallet, history_auth) = if mode == Mode::History {
        let token = env.token("bench-history", &[])?;
        let me = api.call(Method::GET, "/v1/me", &token, None, 200).await?;
        (Some(field(&me, "wallet_id")?), Some(format!("Bearer {token}")))
    } else {
        (None, None)
    };

    let body_value = match &org_id {
        Some(org) => json!({"org_id": org}),
        None => json!({}),
    };
    let payers = people
        .into_iter()
        .map(|user| {
            Ok(Payer {
                auth: format!("Bearer {}", env.token(&user, &[])?),
                wallet: wallets.get(&user).cloned().unwrap_or_default(),
                user,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let metered = (mode == Mode::Metered).then(|| Metered::new(org_id.as_deref()));
    Ok(Plan {
        agent_id,
        org_id,
        payers,
        body: body_value.to_string(),
        body_value,
        metered,
        history_wallet,
        history_auth,
        funded: if mode == Mode::Metered {
            Some(Credits::parse(PAYER_FUNDS).map_err(|e| anyhow!("{e}"))?)
        } else {
            None
        },
    })
}
