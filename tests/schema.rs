//! The embedded Mina schema is what `kco schema import` makes of the pinned
//! `mina-sdk` package, and the simulator speaks a subset of it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use apollo_compiler::Schema;
use apollo_compiler::schema::ExtendedType;
use support::Tools;

fn mina_introspection() -> std::path::PathBuf {
    Tools::locate().unwrap().mina_introspection().unwrap()
}

fn parse_lenient(sdl: &str, name: &str) -> Schema {
    // The Mina schema is not spec-valid (deprecation mismatches): keep the partial schema.
    match Schema::parse(sdl, name) {
        Ok(schema) => schema,
        Err(with_errors) => with_errors.partial,
    }
}

#[test]
fn embedded_mina_sdl_has_not_drifted_from_the_package() {
    let json = std::fs::read_to_string(mina_introspection()).unwrap();
    let imported = kco::schema::import_introspection(&json).unwrap();
    assert!(
        imported.sdl == kco::schema::MINA_SDL,
        "src/schema/mina.graphql differs from `kco schema import` of the mina-sdk package: \
         regenerate it with `cargo run -- schema import <graphql_schema.json> -o src/schema/mina.graphql`"
    );
    // The published file's two quirks are repaired, each with a warning.
    let truncated: Vec<String> = imported
        .warnings
        .iter()
        .filter_map(|w| match w {
            kco::schema::ImportWarning::Truncated { location, .. } => Some(location.clone()),
            _ => None,
        })
        .collect();
    for location in ["AccountUpdateBody.events", "LocalState.failureStatusTable"] {
        assert!(
            truncated.iter().any(|l| l == location),
            "no warning for {location}: {truncated:?}"
        );
    }
    let schema = parse_lenient(&imported.sdl, "mina.graphql");
    assert!(
        schema.types.len() > 150,
        "the Mina schema should have its ~200 types"
    );
}

#[test]
fn the_schema_import_command_writes_sdl_and_warns() {
    let out = tempfile::NamedTempFile::new().unwrap();
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_kco"))
        .args(["schema", "import"])
        .arg(mina_introspection())
        .arg("-o")
        .arg(out.path())
        .output()
        .unwrap();
    assert!(run.status.success(), "{run:?}");
    assert_eq!(
        std::fs::read_to_string(out.path()).unwrap(),
        kco::schema::MINA_SDL
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("warning: the type of LocalState.failureStatusTable is truncated"),
        "{stderr}"
    );

    let garbage = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(garbage.path(), "{\"data\": {\"nothing\": 1}}").unwrap();
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_kco"))
        .args(["schema", "import"])
        .arg(garbage.path())
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("no `__schema` object"));

    let missing = std::process::Command::new(env!("CARGO_BIN_EXE_kco"))
        .args(["schema", "import", "/nonexistent/introspection.json"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
}

/// Every type, field and argument the simulator serves exists in the Mina schema
/// with the same type, so that what passes against the simulator passes against Mina.
type Fields = apollo_compiler::collections::IndexMap<
    apollo_compiler::Name,
    apollo_compiler::schema::Component<apollo_compiler::schema::FieldDefinition>,
>;

/// Each of `ours` is in `theirs`, with the same type and arguments; how many
/// were compared.
fn compare_fields(name: &str, ours: &Fields, theirs: &Fields, problems: &mut Vec<String>) -> usize {
    for (field_name, field) in ours {
        let Some(their_field) = theirs.get(field_name) else {
            problems.push(format!("{name}.{field_name} is not in the Mina schema"));
            continue;
        };
        if field.ty != their_field.ty {
            problems.push(format!(
                "{name}.{field_name}: {} here, {} in Mina",
                field.ty, their_field.ty
            ));
        }
        for arg in &field.arguments {
            match their_field.arguments.iter().find(|a| a.name == arg.name) {
                None => problems.push(format!("{name}.{field_name}({}) is not in Mina", arg.name)),
                Some(theirs) if theirs.ty != arg.ty => problems.push(format!(
                    "{name}.{field_name}({}): {} here, {} in Mina",
                    arg.name, arg.ty, theirs.ty
                )),
                Some(_) => {}
            }
        }
    }
    ours.len()
}

#[test]
fn the_simulator_speaks_a_subset_of_the_mina_schema() {
    let mina = parse_lenient(kco::schema::MINA_SDL, "mina.graphql");
    let simulator = parse_lenient(&kco::simulator::schema().sdl(), "simulator.graphql");
    let mut problems = Vec::new();
    let mut checked_fields = 0;
    for (name, ty) in &simulator.types {
        if ty.is_built_in() {
            continue;
        }
        let Some(theirs) = mina.types.get(name) else {
            problems.push(format!("type {name} is not in the Mina schema"));
            continue;
        };
        match (ty, theirs) {
            (ExtendedType::Object(ours), ExtendedType::Object(theirs)) => {
                checked_fields += compare_fields(name, &ours.fields, &theirs.fields, &mut problems);
                for interface in &ours.implements_interfaces {
                    if !theirs.implements_interfaces.contains(interface) {
                        problems.push(format!(
                            "{name} does not implement {} in Mina",
                            interface.name
                        ));
                    }
                }
            }
            (ExtendedType::Interface(ours), ExtendedType::Interface(theirs)) => {
                checked_fields += compare_fields(name, &ours.fields, &theirs.fields, &mut problems);
            }
            (ExtendedType::Enum(ours), ExtendedType::Enum(theirs)) => {
                for value in ours.values.keys() {
                    if !theirs.values.contains_key(value) {
                        problems.push(format!("{name}.{value} is not a value of Mina's enum"));
                    }
                }
            }
            (ExtendedType::Scalar(_), ExtendedType::Scalar(_)) => {}
            _ => problems.push(format!(
                "{name} is a different kind of type in the Mina schema"
            )),
        }
    }
    assert!(
        problems.is_empty(),
        "the simulator disagrees with the Mina schema:\n{}",
        problems.join("\n")
    );
    assert!(
        checked_fields > 40,
        "only {checked_fields} fields compared: is the simulator schema empty?"
    );
    for field in ["syncStatus", "version", "daemonStatus", "bestChain"] {
        let query = simulator.get_object("query").unwrap();
        assert!(
            query.fields.contains_key(field),
            "the simulator should serve {field}"
        );
    }
}

/// Every read query the pinned `mina-sdk` package's daemon client sends
/// (`mina_sdk/daemon/queries.py`), with the variables it sends, answered by a
/// simulated node without errors and with numbers the client can read.
#[tokio::test]
async fn the_simulator_answers_every_query_the_mina_sdk_client_sends() {
    let path = Tools::locate().unwrap().mina_sdk_queries().unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let constants = regex::Regex::new(r#"(?s)([A-Z_]+) = """(.*?)""""#).unwrap();
    let queries: Vec<(String, String)> = constants
        .captures_iter(&text)
        .map(|c| (c[1].to_owned(), c[2].trim().to_owned()))
        .filter(|(_, query)| query.starts_with("query"))
        .collect();
    assert!(
        queries.len() >= 9,
        "the package's read queries were not found in {}: {queries:?}",
        path.display()
    );
    let sim = kco::simulator::Simulator::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let node = sim
        .add_node(
            (
                support::fixtures::loopback_ip(),
                support::fixtures::MINA_GRAPHQL_PORT,
            )
                .into(),
            kco::simulator::NodeState::default(),
        )
        .await
        .unwrap()
        .address;
    // The sender of the node's pending payments, so that its pool is not empty.
    let sender = kco::simulator::public_key(&format!("sender-{}", node.ip()));
    let http = support::fixtures::http_client();
    for (name, query) in &queries {
        let mut variables = serde_json::Map::new();
        for (variable, value) in [
            ("$publicKey", serde_json::json!(sender)),
            ("$token", serde_json::json!(kco::simulator::DEFAULT_TOKEN)),
            ("$maxLength", serde_json::json!(3)),
        ] {
            if query.contains(variable) {
                variables.insert(variable[1..].to_owned(), value);
            }
        }
        let mut body = serde_json::json!({"query": query});
        if !variables.is_empty() {
            body["variables"] = serde_json::Value::Object(variables);
        }
        let answer: serde_json::Value = http
            .post(format!("http://{node}/graphql"))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(answer.get("errors").is_none(), "{name}: {answer}");
        let data = &answer["data"];
        assert!(
            data.is_object() && !data.as_object().unwrap().is_empty(),
            "{name}: {answer}"
        );
        let mut numbers = Vec::new();
        numbers_in(data, &mut numbers);
        for (field, value) in numbers {
            assert!(
                value.as_u64().is_some()
                    || value
                        .as_str()
                        .is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())),
                "{name}: {field} is {value}, which the client reads as an integer"
            );
        }
        if name.starts_with("POOLED_USER_COMMANDS") {
            assert_eq!(
                data["pooledUserCommands"].as_array().unwrap().len(),
                2,
                "{name}: {answer}"
            );
        }
    }
}

/// The fields the client turns into integers, wherever they are in `value`.
fn numbers_in(value: &serde_json::Value, found: &mut Vec<(String, serde_json::Value)>) {
    const READ_AS_INTEGERS: &[&str] = &[
        "nonce",
        "total",
        "liquid",
        "locked",
        "blockHeight",
        "slot",
        "slotSinceGenesis",
        "amount",
        "fee",
        "commandTransactionCount",
        "blockchainLength",
        "libp2pPort",
    ];
    match value {
        serde_json::Value::Object(map) => {
            for (key, item) in map {
                if READ_AS_INTEGERS.contains(&key.as_str()) && !item.is_null() {
                    found.push((key.clone(), item.clone()));
                } else {
                    numbers_in(item, found);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| numbers_in(i, found)),
        _ => {}
    }
}
