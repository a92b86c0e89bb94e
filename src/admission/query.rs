//! The state query against a GraphQL schema, and trigger paths against the query:
//! which response paths the query selects, with which schema types, so that a
//! trigger can be checked before anything is polled.

use std::collections::BTreeMap;
use std::sync::Arc;

use apollo_compiler::ast::OperationType;
use apollo_compiler::executable::{Selection, SelectionSet};
use apollo_compiler::schema::ExtendedType;
use apollo_compiler::validation::Valid;
use apollo_compiler::{ExecutableDocument, Schema};
use serde_json::Value;

use crate::targetapp::ConditionKind;
use crate::triggers::{FieldPath, Num, Segment};

/// Scalars whose values are numbers, whether they travel as JSON numbers (Int,
/// Float) or as strings of digits (Mina's).
const NUMERIC_SCALARS: &[&str] = &[
    "Int",
    "Float",
    "UInt32",
    "UInt64",
    "Length",
    "Balance",
    "Amount",
    "Fee",
    "Slot",
    "Epoch",
    "Globalslot",
    "GlobalSlotSinceGenesis",
    "GlobalSlotSinceHardFork",
    "GlobalSlotSpan",
    "AccountNonce",
    "Index",
    "BlockTime",
];

/// A schema to check queries against. Real-world schemas (Mina's) are not always
/// spec-valid, so the schema is parsed leniently and assumed valid.
pub struct QuerySchema {
    schema: Valid<Schema>,
    /// What each named type of the schema is as a leaf: worked out once per
    /// schema, not once per review (the Mina schema has hundreds of types).
    leaf_types: Arc<BTreeMap<String, LeafType>>,
}

impl QuerySchema {
    /// Parses SDL, keeping what parses.
    pub fn from_sdl(sdl: &str) -> Self {
        let schema = match Schema::parse(sdl, "schema.graphql") {
            Ok(schema) => schema,
            Err(with_errors) => with_errors.partial,
        };
        let leaf_types = schema
            .types
            .keys()
            .filter_map(|name| Some((name.to_string(), leaf_of_named(&schema, name)?)))
            .collect();
        Self {
            schema: Valid::assume_valid(schema),
            leaf_types: Arc::new(leaf_types),
        }
    }

    /// The embedded Mina schema.
    pub fn mina() -> Self {
        Self::from_sdl(crate::schema::MINA_SDL)
    }
}

/// What a leaf of the query result is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeafType {
    /// Members of the enum.
    Enum {
        name: String,
        values: Vec<String>,
    },
    Boolean,
    /// A numeric scalar (see `NUMERIC_SCALARS`).
    Number {
        scalar: String,
    },
    /// String and other scalars.
    Text {
        scalar: String,
    },
    /// A list of leaves (for `contains`, `in` on the list itself is not allowed).
    List(Box<LeafType>),
    /// An object: not a leaf.
    Object {
        name: String,
    },
}

/// A response node of the query: its type (`[Peer!]!`) and its selected children.
#[derive(Debug, Clone)]
struct Node {
    ty: apollo_compiler::ast::Type,
    children: BTreeMap<String, Node>,
}

/// What a valid state query selects.
#[derive(Debug, Clone)]
pub struct QueryShape {
    root: BTreeMap<String, Node>,
    leaf_types: Arc<BTreeMap<String, LeafType>>,
}

/// The longest state query accepted, in bytes (Mina's health query is ~200).
pub const MAX_QUERY_BYTES: usize = 16 * 1024;

/// The deepest nesting of selection sets, lists and input objects in a query.
/// Checked on the text before parsing, so a hostile query never reaches the
/// recursive parser and validator.
pub const MAX_QUERY_DEPTH: usize = 32;

/// How deep `{`, `[` and `(` nest in a GraphQL document, skipping strings, block
/// strings and comments.
fn query_depth(query: &str) -> usize {
    let bytes = query.as_bytes();
    let (mut depth, mut deepest, mut i) = (0usize, 0usize, 0usize);
    while i < bytes.len() {
        match bytes[i] {
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' && bytes[i] != b'\r' {
                    i += 1;
                }
            }
            b'"' if bytes[i..].starts_with(b"\"\"\"") => {
                i += 3;
                while i < bytes.len() && !bytes[i..].starts_with(b"\"\"\"") {
                    // An escaped triple quote does not end a block string.
                    i += if bytes[i..].starts_with(b"\\\"\"\"") {
                        4
                    } else {
                        1
                    };
                }
                i += 2;
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'{' | b'[' | b'(' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' | b']' | b')' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    deepest
}

/// Checks what holds whatever the schema: `query` is at most [`MAX_QUERY_BYTES`]
/// long, nests at most [`MAX_QUERY_DEPTH`] levels, parses, and holds exactly one
/// operation, a query (a mutation or subscription is never sent, whether or not
/// its schema is at hand).
pub fn check_operation(query: &str) -> Result<(), Vec<String>> {
    check_operation_is(query, OperationType::Query)
}

/// [`check_operation`] for an operation of kind `wanted`.
pub fn check_operation_is(query: &str, wanted: OperationType) -> Result<(), Vec<String>> {
    check_size(query)?;
    let document = apollo_compiler::ast::Document::parse(query, "stateQuery")
        .map_err(|with_errors| problems(&with_errors.errors))?;
    let operations: Vec<OperationType> = document
        .definitions
        .iter()
        .filter_map(|d| match d {
            apollo_compiler::ast::Definition::OperationDefinition(op) => Some(op.operation_type),
            _ => None,
        })
        .collect();
    of_kind(*only_operation(&operations)?, wanted)
}

/// The one operation of a document; none or several are refused.
fn only_operation<T>(operations: &[T]) -> Result<&T, Vec<String>> {
    match operations {
        [one] => Ok(one),
        [] => Err(vec!["the query has no operation".to_owned()]),
        many => Err(vec![format!(
            "the query has {} operations; exactly one is polled",
            many.len()
        )]),
    }
}

/// Refuses a query too long or too deep to be parsed.
fn check_size(query: &str) -> Result<(), Vec<String>> {
    if query.len() > MAX_QUERY_BYTES {
        return Err(vec![format!(
            "the query is {} bytes; at most {MAX_QUERY_BYTES} are allowed",
            query.len()
        )]);
    }
    let depth = query_depth(query);
    if depth > MAX_QUERY_DEPTH {
        return Err(vec![format!(
            "the query nests {depth} levels deep; at most {MAX_QUERY_DEPTH} are allowed"
        )]);
    }
    Ok(())
}

fn of_kind(kind: OperationType, wanted: OperationType) -> Result<(), Vec<String>> {
    match (kind, wanted) {
        _ if kind == wanted => Ok(()),
        (_, OperationType::Query) => Err(vec![format!(
            "the operation is a {kind}; only a query is polled (mutations and subscriptions are refused)"
        )]),
        _ => Err(vec![format!(
            "the operation is a {kind}; only a subscription is subscribed to"
        )]),
    }
}

fn problems(errors: &apollo_compiler::validation::DiagnosticList) -> Vec<String> {
    errors.iter().map(|d| d.error.to_string()).collect()
}

/// Checks that `query` parses, is valid against `schema`, holds exactly one
/// operation, and that it is a query. Returns every problem found. Queries longer
/// than [`MAX_QUERY_BYTES`] or nested deeper than [`MAX_QUERY_DEPTH`] are refused
/// before they are parsed.
pub fn check_query(schema: &QuerySchema, query: &str) -> Result<QueryShape, Vec<String>> {
    check_against(schema, query, OperationType::Query)
}

/// Checks that `query` is a valid subscription against `schema`, as
/// [`check_query`] checks a query (a subscription selects one root field); the
/// root field's response key and what it selects, for [`QueryShape::with_pushed`].
pub fn check_subscription(
    schema: &QuerySchema,
    query: &str,
) -> Result<(String, QueryShape), Vec<String>> {
    let shape = check_against(schema, query, OperationType::Subscription)?;
    let mut roots = shape.root.keys();
    let root = match (roots.next(), roots.next()) {
        (Some(root), None) => root.clone(),
        _ => {
            return Err(vec![
                "a subscription selects exactly one root field".to_owned(),
            ]);
        }
    };
    Ok((root, shape))
}

fn check_against(
    schema: &QuerySchema,
    query: &str,
    wanted: OperationType,
) -> Result<QueryShape, Vec<String>> {
    check_size(query)?;
    let document = ExecutableDocument::parse_and_validate(&schema.schema, query, "stateQuery")
        .map_err(|with_errors| problems(&with_errors.errors))?;
    let operations: Vec<_> = document.operations.iter().collect();
    let operation = *only_operation(&operations)?;
    of_kind(operation.operation_type, wanted)?;
    let mut shape = QueryShape {
        root: BTreeMap::new(),
        leaf_types: Arc::clone(&schema.leaf_types),
    };
    collect(&document, &operation.selection_set, &mut shape.root, 0);
    Ok(shape)
}

/// Flattens fields, fragment spreads and inline fragments into response keys.
fn collect(
    document: &ExecutableDocument,
    set: &SelectionSet,
    into: &mut BTreeMap<String, Node>,
    depth: usize,
) {
    // Validation already refuses fragment cycles; the depth bound is belt and braces.
    if depth > 64 {
        return;
    }
    for selection in &set.selections {
        match selection {
            Selection::Field(field) => {
                let node = into
                    .entry(field.response_key().to_string())
                    .or_insert_with(|| Node {
                        ty: field.definition.ty.clone(),
                        children: BTreeMap::new(),
                    });
                collect(
                    document,
                    &field.selection_set,
                    &mut node.children,
                    depth + 1,
                );
            }
            Selection::FragmentSpread(spread) => {
                if let Some(fragment) = document.fragments.get(&spread.fragment_name) {
                    collect(document, &fragment.selection_set, into, depth + 1);
                }
            }
            Selection::InlineFragment(inline) => {
                collect(document, &inline.selection_set, into, depth + 1)
            }
        }
    }
}

fn leaf_of_named(schema: &Schema, name: &str) -> Option<LeafType> {
    match schema.types.get(name)? {
        ExtendedType::Enum(e) => Some(LeafType::Enum {
            name: name.to_owned(),
            values: e.values.keys().map(ToString::to_string).collect(),
        }),
        ExtendedType::Scalar(_) if name == "Boolean" => Some(LeafType::Boolean),
        ExtendedType::Scalar(_) if NUMERIC_SCALARS.contains(&name) => Some(LeafType::Number {
            scalar: name.to_owned(),
        }),
        ExtendedType::Scalar(_) => Some(LeafType::Text {
            scalar: name.to_owned(),
        }),
        _ => Some(LeafType::Object {
            name: name.to_owned(),
        }),
    }
}

impl QueryShape {
    /// This shape with what subscription `name` pushes (its root field
    /// `root`, as `subscription` selects it) under `@name`, where trigger paths
    /// read it.
    pub fn with_pushed(mut self, name: &str, root: &str, mut subscription: QueryShape) -> Self {
        if let Some(node) = subscription.root.remove(root) {
            self.root.insert(format!("@{name}"), node);
        }
        self
    }

    fn leaf(&self, ty: &apollo_compiler::ast::Type) -> LeafType {
        if ty.is_list() {
            return LeafType::List(Box::new(self.leaf(ty.item_type())));
        }
        let name = ty.inner_named_type().as_str();
        self.leaf_types
            .get(name)
            .cloned()
            .unwrap_or(LeafType::Object {
                name: name.to_owned(),
            })
    }

    /// The type a trigger path reaches, or why it reaches nothing the query selects.
    pub fn resolve(&self, path: &FieldPath) -> Result<LeafType, String> {
        if path.is_up() {
            return Ok(LeafType::Boolean);
        }
        if let Some(name) = path.subscription()
            && !self.root.contains_key(&format!("@{name}"))
        {
            return Err(format!(
                "`@{name}` reads subscription {name}, and spec.subscriptions has none by that name"
            ));
        }
        let mut children = &self.root;
        let mut current: Option<apollo_compiler::ast::Type> = None;
        let mut walked = Vec::new();
        for segment in path.segments() {
            match segment {
                Segment::Key(key) => {
                    if current.as_ref().is_some_and(|t| t.is_list()) {
                        return Err(format!(
                            "{} is a list: index it (`.0`) or count it (`.#`) before `.{key}`",
                            walked.join(".")
                        ));
                    }
                    let node = children.get(key).ok_or_else(|| {
                        let at = if walked.is_empty() {
                            "the query".to_owned()
                        } else {
                            walked.join(".")
                        };
                        let known: Vec<&str> = children.keys().map(String::as_str).collect();
                        format!(
                            "{at} selects no field {key:?} (it selects: {})",
                            known.join(", ")
                        )
                    })?;
                    current = Some(node.ty.clone());
                    children = &node.children;
                }
                Segment::Index(i) => match &current {
                    Some(t) if t.is_list() => current = Some(t.item_type().clone()),
                    _ => {
                        return Err(format!(
                            "{} is not a list: `.{i}` cannot index it",
                            walked.join(".")
                        ));
                    }
                },
            }
            walked.push(match segment {
                Segment::Key(k) => k.to_owned(),
                Segment::Index(i) => i.to_string(),
            });
        }
        let ty = current.ok_or_else(|| "the path is empty".to_owned())?;
        if path.is_length() {
            return if ty.is_list() {
                Ok(LeafType::Number {
                    scalar: "Int".to_owned(),
                })
            } else {
                Err(format!(
                    "{} is not a list: `#` counts lists",
                    walked.join(".")
                ))
            };
        }
        Ok(self.leaf(&ty))
    }
}

/// Whether `kind` with `value` fits a leaf of type `leaf`; the reason if not.
pub fn check_condition(
    kind: ConditionKind,
    leaf: &LeafType,
    value: Option<&Value>,
) -> Result<(), String> {
    use ConditionKind::*;
    if let LeafType::Object { name } = leaf
        && !matches!(kind, Exists | Absent | Changed | Unchanged)
    {
        return Err(format!(
            "the field is an object ({name}), not a value: point the trigger at one of its fields"
        ));
    }
    let ordering = matches!(
        kind,
        GreaterThan | GreaterThanOrEqual | LessThan | LessThanOrEqual
    );
    if ordering && !matches!(leaf, LeafType::Number { .. }) {
        return Err(format!(
            "{} compares numbers; this field is {}",
            kind.as_str(),
            describe(leaf)
        ));
    }
    if kind == Contains && !matches!(leaf, LeafType::Text { .. } | LeafType::List(_)) {
        return Err(format!(
            "contains needs a string or a list; this field is {}",
            describe(leaf)
        ));
    }
    let Some(value) = value else {
        return Ok(());
    };
    let values: Vec<&Value> = match (kind, value) {
        (In | NotIn, Value::Array(items)) => items.iter().collect(),
        (Equals | NotEquals, v) => vec![v],
        (Contains, v) => match leaf {
            LeafType::List(item) => return fits(item, v).map_err(|e| format!("contains: {e}")),
            _ => vec![v],
        },
        _ => return Ok(()),
    };
    for v in values {
        fits(leaf, v)?;
    }
    Ok(())
}

/// Whether a literal `value` can be a value of `leaf`.
fn fits(leaf: &LeafType, value: &Value) -> Result<(), String> {
    match leaf {
        LeafType::Enum { name, values } => match value.as_str() {
            Some(v) if values.iter().any(|x| x == v) => Ok(()),
            _ => Err(format!(
                "{value} is not a value of enum {name} ({})",
                values.join(", ")
            )),
        },
        LeafType::Boolean if value.is_boolean() => Ok(()),
        LeafType::Boolean => Err(format!("{value} is not a boolean")),
        LeafType::Number { .. } if Num::from_value(value).is_some() => Ok(()),
        LeafType::Number { scalar } => Err(format!("{value} is not a number ({scalar})")),
        LeafType::Text { .. } if value.is_string() => Ok(()),
        LeafType::Text { scalar } => Err(format!("{value} is not a string ({scalar})")),
        LeafType::List(_) => Err(
            "the field is a list: compare one element (`.0`), its length (`.#`), or use contains"
                .to_owned(),
        ),
        LeafType::Object { name } => Err(format!("the field is an object ({name})")),
    }
}

/// How a leaf is exported as a series (`spec.metrics`), or why it cannot be.
pub fn series_kind(leaf: &LeafType) -> Result<crate::target_metrics::Kind, String> {
    use crate::target_metrics::{Kind, MAX_STATES};
    match leaf {
        LeafType::Number { .. } => Ok(Kind::Number),
        LeafType::Boolean => Ok(Kind::Boolean),
        LeafType::Enum { name, values } if values.len() > MAX_STATES => Err(format!(
            "the enum {name} has {} members; at most {MAX_STATES} are exported (a series each)",
            values.len()
        )),
        LeafType::Enum { values, .. } => Ok(Kind::States(values.clone().into())),
        LeafType::List(_) => Err(format!(
            "the field is {}: export its length (`.#`) or one of its items",
            describe(leaf)
        )),
        LeafType::Text { .. } | LeafType::Object { .. } => Err(format!(
            "the field is {}; only numbers, booleans, enums and list lengths are exported",
            describe(leaf)
        )),
    }
}

fn describe(leaf: &LeafType) -> String {
    match leaf {
        LeafType::Enum { name, .. } => format!("the enum {name}"),
        LeafType::Boolean => "a Boolean".to_owned(),
        LeafType::Number { scalar } => format!("a number ({scalar})"),
        LeafType::Text { scalar } => format!("a {scalar}"),
        LeafType::List(item) => format!("a list of {}", describe(item)),
        LeafType::Object { name } => format!("an object ({name})"),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::targetapp::DEFAULT_STATE_QUERY;

    fn shape(query: &str) -> QueryShape {
        check_query(&QuerySchema::mina(), query).unwrap()
    }

    fn path(p: &str) -> FieldPath {
        p.parse().unwrap()
    }

    #[test]
    fn depth_counts_nesting_outside_strings_and_comments() {
        assert_eq!(query_depth(DEFAULT_STATE_QUERY), 3);
        assert_eq!(query_depth("{ a(x: [[1]], y: {z: 2}) }"), 4);
        assert_eq!(query_depth("{ a(s: \"{{{{\\\"{{\") }"), 2);
        assert_eq!(query_depth("{ a(s: \"\"\" {{{ \\\"\"\" {{ \"\"\") }"), 2);
        assert_eq!(query_depth("# {{{{{{\n{ a }"), 1);
        assert_eq!(query_depth("}}}} { a }"), 1);
        // Unterminated strings and block strings end the scan, never panic.
        assert_eq!(query_depth("{ a(s: \"{{{"), 2);
        assert_eq!(query_depth("{ a(s: \"\"\"{{{"), 2);
        assert_eq!(query_depth("\"\\"), 0);
    }

    #[test]
    fn hostile_queries_are_refused_before_parsing() {
        let schema = QuerySchema::mina();
        let deep = format!(
            "query {{ {}version{} }}",
            "daemonStatus { ".repeat(499),
            " }".repeat(499)
        );
        assert_eq!(
            check_query(&schema, &deep).unwrap_err(),
            ["the query nests 500 levels deep; at most 32 are allowed"]
        );
        let long = format!("query {{ {} }}", "version ".repeat(3000));
        let refused = check_query(&schema, &long).unwrap_err();
        assert!(
            refused[0].starts_with("the query is 24010 bytes; at most 16384"),
            "{refused:?}"
        );
        // At the limits: parsed and checked as usual.
        let nested = |depth: usize| {
            format!(
                "query {{ {}b{} }}",
                "a { ".repeat(depth - 1),
                " }".repeat(depth - 1)
            )
        };
        let at_limit = check_query(&schema, &nested(MAX_QUERY_DEPTH)).unwrap_err();
        assert!(
            at_limit.iter().all(|p| !p.contains("nests")),
            "{at_limit:?}"
        );
        let over = check_query(&schema, &nested(MAX_QUERY_DEPTH + 1)).unwrap_err();
        assert_eq!(
            over,
            ["the query nests 33 levels deep; at most 32 are allowed"]
        );
        let just = format!(
            "query {{ daemonStatus {{ peers {{ peerId }} }} {} }}",
            "v: version ".repeat(1000)
        );
        assert!(just.len() <= MAX_QUERY_BYTES);
        assert!(check_query(&schema, &just).is_ok());
    }

    #[test]
    fn the_default_query_is_valid_against_the_mina_schema() {
        let s = shape(DEFAULT_STATE_QUERY);
        assert!(
            matches!(s.resolve(&path("daemonStatus.syncStatus")), Ok(LeafType::Enum { ref values, .. }) if values.contains(&"SYNCED".to_owned()))
        );
        assert_eq!(
            s.resolve(&path("daemonStatus.blockchainLength")),
            Ok(LeafType::Number {
                scalar: "Int".into()
            })
        );
        assert_eq!(
            s.resolve(&path("daemonStatus.peers.#")),
            Ok(LeafType::Number {
                scalar: "Int".into()
            })
        );
        assert_eq!(
            s.resolve(&path("daemonStatus.peers.0.peerId")),
            Ok(LeafType::Text {
                scalar: "String".into()
            })
        );
        assert_eq!(s.resolve(&path("$up")), Ok(LeafType::Boolean));
    }

    #[test]
    fn paths_must_lead_to_what_the_query_selects() {
        let s = shape(DEFAULT_STATE_QUERY);
        for (bad, needle) in [
            ("daemonStatus.chainId", "selects no field \"chainId\""),
            ("daemonStatus.peers.peerId", "is a list"),
            ("daemonStatus.syncStatus.#", "is not a list"),
            ("daemonStatus.uptimeSecs.0", "is not a list"),
            ("bestChain", "selects no field"),
        ] {
            let err = s.resolve(&path(bad)).unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }

    #[test]
    fn aliases_fragments_and_mina_scalars() {
        let s = shape(
            "query { tip: bestChain(maxLength: 1) { ...B } daemonStatus { ... on DaemonStatus { sync: syncStatus } } }
             fragment B on Block { protocolState { consensusState { blockHeight } } stateHash }",
        );
        assert_eq!(
            s.resolve(&path("tip.0.protocolState.consensusState.blockHeight")),
            Ok(LeafType::Number {
                scalar: "Length".into()
            })
        );
        assert_eq!(
            s.resolve(&path("tip.0.stateHash")),
            Ok(LeafType::Text {
                scalar: "StateHash".into()
            })
        );
        assert!(matches!(
            s.resolve(&path("daemonStatus.sync")),
            Ok(LeafType::Enum { .. })
        ));
        assert!(
            s.resolve(&path("bestChain")).is_err(),
            "the alias is the key"
        );
    }

    #[test]
    fn bad_queries_are_refused_with_a_reason() {
        let schema = QuerySchema::mina();
        let err = |q: &str| check_query(&schema, q).unwrap_err().join("; ");
        assert!(err("query { daemonStatus { noSuchField } }").contains("noSuchField"));
        assert!(
            err("query { daemonStatus {")
                .to_lowercase()
                .contains("expected")
        );
        assert!(err("query A { version } query B { syncStatus }").contains("2 operations"));
        // Valid operations of the wrong kind: refused for their kind, not for their shape.
        let mutation = err("mutation { startFilteredLog(filter: [\"x\"]) }");
        assert!(
            mutation.contains("is a mutation; only a query is polled"),
            "{mutation}"
        );
        let subscription = err("subscription { newSyncUpdate }");
        assert!(subscription.contains("is a subscription"), "{subscription}");
    }

    #[test]
    fn conditions_must_fit_the_leaf_type() {
        let s = shape(DEFAULT_STATE_QUERY);
        let leaf = |p: &str| s.resolve(&path(p)).unwrap();
        use ConditionKind::*;
        let sync = leaf("daemonStatus.syncStatus");
        assert!(check_condition(Equals, &sync, Some(&json!("OFFLINE"))).is_ok());
        assert!(check_condition(In, &sync, Some(&json!(["SYNCED", "CATCHUP"]))).is_ok());
        let e = check_condition(Equals, &sync, Some(&json!("DOWN"))).unwrap_err();
        assert!(e.contains("not a value of enum SyncStatus"), "{e}");
        assert!(check_condition(NotIn, &sync, Some(&json!(["SYNCED", "ASLEEP"]))).is_err());
        assert!(
            check_condition(GreaterThan, &sync, Some(&json!(1)))
                .unwrap_err()
                .contains("compares numbers")
        );
        let height = leaf("daemonStatus.blockchainLength");
        assert!(check_condition(LessThan, &height, Some(&json!(10))).is_ok());
        assert!(
            check_condition(Equals, &height, Some(&json!("1000"))).is_ok(),
            "digit strings are numbers"
        );
        assert!(check_condition(Equals, &height, Some(&json!("tall"))).is_err());
        let up = leaf("$up");
        assert!(check_condition(Equals, &up, Some(&json!(false))).is_ok());
        assert!(check_condition(Equals, &up, Some(&json!("false"))).is_err());
        let peers = s.resolve(&path("daemonStatus.peers")).unwrap();
        assert!(
            check_condition(Equals, &peers, Some(&json!(1))).is_err(),
            "{peers:?}"
        );
        assert!(check_condition(Exists, &peers, None).is_ok());
        let peer_id = leaf("daemonStatus.peers.0.peerId");
        assert!(check_condition(Contains, &peer_id, Some(&json!("12D3"))).is_ok());
        assert!(check_condition(Contains, &height, Some(&json!(1))).is_err());
    }
}
