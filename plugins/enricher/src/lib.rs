//! Adds configured attributes to every span, optionally only to spans of some services.
//!
//! ```toml
//! [attributes]                    # added to every span
//! "deployment.environment" = "prod"
//! team = "payments"
//!
//! [[rule]]                        # added to the spans of one service
//! service = "checkout"
//! attributes = { tier = "1" }
//!
//! overwrite = false               # keep a value the span already has (default)
//! ```
use std::collections::BTreeMap;

use tracer_plugin_sdk::{
    Action, Config, Interest, Plugin, Resource, Span, Value, serde::Deserialize,
};

#[derive(Deserialize, Default)]
#[serde(crate = "tracer_plugin_sdk::serde", default, deny_unknown_fields)]
struct Settings {
    attributes: BTreeMap<String, toml_value::Scalar>,
    rule: Vec<Rule>,
    overwrite: bool,
}

#[derive(Deserialize)]
#[serde(crate = "tracer_plugin_sdk::serde", deny_unknown_fields)]
struct Rule {
    service: String,
    attributes: BTreeMap<String, toml_value::Scalar>,
}

/// A TOML scalar as an attribute value.
mod toml_value {
    use super::*;

    #[derive(Deserialize, Clone)]
    #[serde(crate = "tracer_plugin_sdk::serde", untagged)]
    pub enum Scalar {
        Bool(bool),
        Int(i64),
        Float(f64),
        Str(String),
    }

    impl From<Scalar> for Value {
        fn from(s: Scalar) -> Value {
            match s {
                Scalar::Bool(b) => Value::Boolean(b),
                Scalar::Int(i) => Value::Int(i),
                Scalar::Float(x) => Value::Float(x),
                Scalar::Str(s) => Value::Str(s),
            }
        }
    }
}

pub struct Enricher {
    all: Vec<(String, Value)>,
    rules: Vec<(String, Vec<(String, Value)>)>,
    overwrite: bool,
}

fn pairs(m: BTreeMap<String, toml_value::Scalar>) -> Result<Vec<(String, Value)>, String> {
    m.into_iter()
        .map(|(k, v)| {
            if k.is_empty() {
                Err("an attribute key is empty".to_string())
            } else {
                Ok((k, v.into()))
            }
        })
        .collect()
}

impl Plugin for Enricher {
    fn init(config: &Config) -> Result<Self, String> {
        let s: Settings = config.parse()?;
        if s.attributes.is_empty() && s.rule.is_empty() {
            return Err(
                "nothing to add: set [attributes] (added to every span) or [[rule]] \
                        (service = \"...\" and the attributes added to that service's spans)"
                    .into(),
            );
        }
        Ok(Self {
            all: pairs(s.attributes)?,
            rules: s
                .rule
                .into_iter()
                .map(|r| Ok((r.service, pairs(r.attributes)?)))
                .collect::<Result<_, String>>()?,
            overwrite: s.overwrite,
        })
    }

    fn interest(&self) -> Interest {
        let mut keys: Vec<&str> = self.all.iter().map(|(k, _)| k.as_str()).collect();
        for (_, attrs) in &self.rules {
            keys.extend(attrs.iter().map(|(k, _)| k.as_str()));
        }
        // Without overwrite, existing values must be seen to be kept.
        let i = if self.overwrite {
            Interest::none()
        } else {
            Interest::none().attributes(keys)
        };
        if self.rules.is_empty() {
            i
        } else {
            i.resource_attributes(["service.name"])
        }
    }

    fn on_span(&mut self, span: &Span, resource: &Resource) -> Action {
        let service = resource.str_attr("service.name");
        let rules = self
            .rules
            .iter()
            .filter(|(s, _)| Some(s.as_str()) == service)
            .flat_map(|(_, a)| a);
        let mut action = Action::keep();
        for (k, v) in self.all.iter().chain(rules) {
            if self.overwrite || span.attr(k).is_none() {
                action = action.set(k.clone(), v.clone());
            }
        }
        action
    }
}

tracer_plugin_sdk::export_plugin!(Enricher);

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_plugin_sdk::testing;

    #[test]
    fn adds_configured_attributes_without_overwriting() {
        let cfg = "[attributes]\n\"deployment.environment\" = \"prod\"\nreplicas = 3\n";
        let v = testing::run::<Enricher>(
            cfg,
            vec![testing::span(), testing::span().with("replicas", 5i64)],
        )
        .unwrap();
        assert_eq!(v.len(), 2);
        assert!(v[0].keep);
        assert_eq!(v[0].edits.len(), 2);
        assert_eq!(
            v[1].edits.len(),
            1,
            "replicas already set: {:?}",
            v[1].edits
        );
        testing::assert_set(&v[1], "deployment.environment", "prod");
    }

    #[test]
    fn refuses_empty_and_bad_config() {
        assert!(
            testing::run::<Enricher>("", vec![])
                .unwrap_err()
                .contains("nothing to add")
        );
        assert!(
            testing::run::<Enricher>("colour = 1", vec![])
                .unwrap_err()
                .contains("invalid config")
        );
    }
}
