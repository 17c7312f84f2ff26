//! Plans and entitlements (SPEC 7): what each tier allows, and the answer
//! to "may I do X (with this size / count)?".

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The features clients ask about.
pub const FEATURES: [&str; 7] = [
    "chat",
    "private_agents",
    "publish_marketplace",
    "web_search",
    "kb_upload",
    "kb_url_indexing",
    "kb_image_uploads",
];

/// A tier and what it allows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// `free`, `pro`, ...
    pub id: String,
    pub name: String,
    /// Features this plan allows.
    pub features: Vec<String>,
    /// Most knowledge-base files; null = unlimited.
    #[serde(default)]
    pub kb_max_files: Option<u64>,
    /// Largest knowledge-base file in bytes; null = unlimited.
    #[serde(default)]
    pub kb_max_file_bytes: Option<u64>,
}

pub const FREE: &str = "free";
pub const PRO: &str = "pro";

/// Free: chat, private agents, a knowledge base of 1 file of at most 2 MB.
/// Pro: also publishing, web search, unlimited files, URL indexing, images.
pub fn default_plans() -> Vec<Plan> {
    vec![
        Plan {
            id: FREE.into(),
            name: "Free".into(),
            features: ["chat", "private_agents", "kb_upload"].map(String::from).to_vec(),
            kb_max_files: Some(1),
            kb_max_file_bytes: Some(2 * 1024 * 1024),
        },
        Plan {
            id: PRO.into(),
            name: "Pro".into(),
            features: FEATURES.map(String::from).to_vec(),
            kb_max_files: None,
            kb_max_file_bytes: None,
        },
    ]
}

/// Reads `TALLY_PLANS`: a JSON array of plans; `free` must be among them.
pub fn parse_plans(text: &str) -> Result<Vec<Plan>, String> {
    let plans: Vec<Plan> =
        serde_json::from_str(text).map_err(|e| format!("not a JSON array of plans: {e}"))?;
    if !plans.iter().any(|p| p.id == FREE) {
        return Err("a plan with id 'free' is required".into());
    }
    for p in &plans {
        if let Some(f) = p.features.iter().find(|f| !FEATURES.contains(&f.as_str())) {
            return Err(format!("plan {}: unknown feature '{f}'", p.id));
        }
    }
    Ok(plans)
}

/// The answer to an entitlement check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct Decision {
    pub allowed: bool,
    /// The plan in force.
    pub plan: String,
    pub feature: String,
    /// Why not (when refused): `feature_not_in_plan`, `file_too_large`, `file_limit_reached`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The limit that refused it (bytes or files), when one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// A human-readable explanation.
    pub message: String,
}

/// May a holder of `plan` use `feature` (for a file of `size_bytes`, with
/// `count` files already there)?
pub fn check(plan: &Plan, feature: &str, size_bytes: Option<u64>, count: Option<u64>) -> Decision {
    let decision = |allowed: bool, reason: Option<&str>, limit: Option<u64>, message: String| Decision {
        allowed,
        plan: plan.id.clone(),
        feature: feature.to_string(),
        reason: reason.map(str::to_string),
        limit,
        message,
    };
    if !plan.features.iter().any(|f| f == feature) {
        return decision(
            false,
            Some("feature_not_in_plan"),
            None,
            format!("{feature} is not part of the {} plan", plan.name),
        );
    }
    if feature == "kb_upload" {
        if let (Some(size), Some(max)) = (size_bytes, plan.kb_max_file_bytes) {
            if size > max {
                return decision(
                    false,
                    Some("file_too_large"),
                    Some(max),
                    format!("files may be at most {max} bytes on the {} plan", plan.name),
                );
            }
        }
        if let (Some(n), Some(max)) = (count, plan.kb_max_files) {
            if n >= max {
                return decision(
                    false,
                    Some("file_limit_reached"),
                    Some(max),
                    format!("the {} plan allows {max} knowledge-base file(s)", plan.name),
                );
            }
        }
    }
    decision(true, None, None, format!("{feature} is allowed on the {} plan", plan.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_and_pro_limits() {
        let plans = default_plans();
        let (free, pro) = (&plans[0], &plans[1]);
        let big = check(free, "kb_upload", Some(3 * 1024 * 1024), Some(0));
        assert_eq!(
            (big.allowed, big.reason.as_deref(), big.limit),
            (false, Some("file_too_large"), Some(2_097_152))
        );
        let second = check(free, "kb_upload", Some(1000), Some(1));
        assert_eq!(
            (second.allowed, second.reason.as_deref(), second.limit),
            (false, Some("file_limit_reached"), Some(1))
        );
        assert!(check(free, "kb_upload", Some(2 * 1024 * 1024), Some(0)).allowed);
        assert!(!check(free, "publish_marketplace", None, None).allowed);
        assert!(check(pro, "kb_upload", Some(3 * 1024 * 1024), Some(50)).allowed);
        assert!(check(pro, "publish_marketplace", None, None).allowed);
    }

    #[test]
    fn plans_parse() {
        assert!(parse_plans(r#"[{"id": "pro", "name": "Pro", "features": []}]"#).is_err());
        assert!(parse_plans(r#"[{"id": "free", "name": "F", "features": ["teleport"]}]"#).is_err());
        assert_eq!(parse_plans(r#"[{"id": "free", "name": "F", "features": ["chat"]}]"#).unwrap().len(), 1);
    }
}
