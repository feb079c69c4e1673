//! `/v1/budgets`: each team's spend in its current budget period, against the budget in the
//! sidecars' own policy file (read on every call, so an edited ConfigMap shows at once).
//! Periods are UTC: a day from midnight, a week from Monday, a month from the 1st.

use crate::config::raw::RawTeam;
use std::collections::BTreeMap;
use std::path::Path;

pub use crate::governance::Per;

/// A team's budget as the policy states it.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    pub team: String,
    /// Pico-dollars.
    pub pico: i64,
    pub per: Per,
}

#[derive(serde::Deserialize)]
struct PolicyTeams {
    #[serde(default)]
    teams: BTreeMap<String, RawTeam>,
}

/// The budgets in a policy file. Only `teams:` is read: the rest of the policy (providers'
/// keys and the like) is the sidecars' business and may name variables the collector lacks.
pub fn read(path: &Path) -> Result<Vec<Budget>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the policy {}: {e}", path.display()))?;
    let value: serde_yaml::Value =
        serde_yaml::from_str(&text).map_err(|e| crate::config::yaml_error(e).to_string())?;
    let teams = match value.get("teams") {
        Some(t) => {
            serde_yaml::from_value::<PolicyTeams>(serde_yaml::Value::Mapping(
                [(serde_yaml::Value::from("teams"), t.clone())]
                    .into_iter()
                    .collect(),
            ))
            .map_err(|e| crate::config::yaml_error(e).to_string())?
            .teams
        }
        None => BTreeMap::new(),
    };
    let mut out = Vec::new();
    for (team, t) in teams {
        let Some(b) = t.budget else { continue };
        let per = Per::parse(&b.per)
            .ok_or_else(|| format!("teams.{team}.budget.per: not one of day, week, month"))?;
        if !b.usd.is_finite() || b.usd < 0.0 || b.usd > 9.0e6 {
            return Err(format!(
                "teams.{team}.budget.usd: must be between 0 and 9,000,000"
            ));
        }
        out.push(Budget {
            team,
            pico: (b.usd * 1e12).round() as i64,
            per,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_only_teams_from_the_policy() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("policy.yaml");
        std::fs::write(
            &p,
            "providers: { openai: { format: openai, base_url: \"${UNSET_IN_COLLECTOR}\" } }\nteams:\n  research: { budget: { usd: 200, per: day } }\n  ops: {}\n",
        )
        .unwrap();
        let b = read(&p).unwrap();
        assert_eq!(
            b,
            vec![Budget {
                team: "research".into(),
                pico: 200_000_000_000_000,
                per: Per::Day
            }]
        );
    }
}
