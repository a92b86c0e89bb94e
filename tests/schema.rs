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
/// simulated node without errors and with values the client can read.
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
    let (_sim, node) = simulated_node().await;
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
        let problems = support::mina::check_answer(data, &how_clients_read);
        assert!(problems.is_empty(), "{name}: {problems:#?}\n{answer}");
        if name.starts_with("POOLED_USER_COMMANDS") {
            assert_eq!(
                data["pooledUserCommands"].as_array().unwrap().len(),
                2,
                "{name}: {answer}"
            );
        }
    }
}

/// How Mina's clients (mina-sdk, o1js) read each field they ask for, found by
/// the object holding it and its name; `None` for a field no client asks for.
fn how_clients_read(parent: &str, field: &str) -> Option<support::mina::Rule> {
    use support::mina::Format::*;
    Some(match (parent, field) {
        ("" | "daemonStatus", "syncStatus") => (SyncStatus, false),
        ("", "networkID") | ("daemonStatus", "commitId") => (Text, false),
        ("", "transactionStatus") => (TransactionStatus, false),
        ("daemonStatus", "blockchainLength") => (Int, true),
        ("daemonStatus", "highestBlockLengthReceived" | "uptimeSecs") => (Int, false),
        ("daemonStatus", "stateHash") => (StateHash, true),
        ("peers" | "getPeers", "peerId" | "host") => (Text, false),
        ("peers" | "getPeers", "libp2pPort") => (Int, false),
        ("consensusConfiguration", _) => (Int, false),
        ("genesisConstants", "genesisTimestamp") => (Date, false),
        ("genesisConstants", "coinbase" | "accountCreationFee") => (Digits, false),
        ("account" | "creatorAccount" | "delegateAccount", "publicKey") => (PublicKey, false),
        ("account", "delegate") => (PublicKey, true),
        ("account", "tokenId" | "token") => (TokenId, false),
        ("account", "nonce") => (Digits, true),
        ("account", "receiptChainHash") => (ReceiptChainHash, true),
        ("account", "votingFor") => (StateHash, true),
        ("account", "zkappState" | "actionState") => (Field, true),
        ("account", "provedState") => (Bool, true),
        ("account", "tokenSymbol" | "zkappUri") => (Text, true),
        // Objects a client accepts as null.
        ("account", "delegateAccount" | "verificationKey" | "permissions") => (Text, true),
        ("balance", "total") => (Digits, false),
        ("balance", "liquid" | "locked") => (Digits, true),
        ("timing", _) => (Digits, true),
        ("permissions", _) | ("setVerificationKey", "auth") => (AuthRequired, false),
        ("setVerificationKey", "txnVersion") => (Digits, false),
        ("verificationKey", "verificationKey") => (Base64, false),
        ("verificationKey", "hash") => (Field, false),
        ("bestChain", "stateHash") | ("protocolState", "previousStateHash") => (StateHash, false),
        ("bestChain", "commandTransactionCount") => (Int, false),
        ("blockchainState", "snarkedLedgerHash" | "stagedLedgerHash") => (LedgerHash, false),
        ("blockchainState", "date" | "utcDate") => (Digits, false),
        ("blockchainState", "stagedLedgerProofEmitted") => (Bool, true),
        ("consensusState", _) => (Digits, false),
        ("ledger", "hash") => (LedgerHash, false),
        ("ledger", "totalCurrency") => (Digits, false),
        ("nextEpochData" | "stakingEpochData", "seed") => (EpochSeed, false),
        ("nextEpochData" | "stakingEpochData", "startCheckpoint" | "lockCheckpoint") => {
            (StateHash, false)
        }
        ("nextEpochData" | "stakingEpochData", "epochLength") => (Digits, false),
        ("zkappCommands", "hash") | ("pooledUserCommands", "hash") => (TransactionHash, false),
        ("zkappCommands", "failureReason") => (Text, true),
        ("failureReason", "failures") => (Text, false),
        ("failureReason", "index") => (Digits, true),
        ("pooledUserCommands", "id") => (Base64, false),
        ("pooledUserCommands", "kind") => (Text, false),
        ("pooledUserCommands", "nonce") => (Int, false),
        ("pooledUserCommands", "amount" | "fee") => (Digits, false),
        ("pooledUserCommands", "from" | "to") => (PublicKey, false),
        _ => return None,
    })
}

/// The template literals of o1js's compiled client, each with the name it is
/// bound to (`const name =` or `function name(`).
fn template_literals(js: &str) -> Vec<(String, String)> {
    let binding = regex::Regex::new(r"(?:const|function)\s+(\w+)").unwrap();
    let mut literals = Vec::new();
    let mut chars = js.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        if c != '`' {
            continue;
        }
        // Up to the closing backtick, skipping over `${...}`.
        let mut depth = 0;
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    chars.next();
                }
                '$' if depth == 0 && chars.peek().is_some_and(|(_, n)| *n == '{') => {
                    chars.next();
                    depth = 1;
                }
                '{' if depth > 0 => depth += 1,
                '}' if depth > 0 => depth -= 1,
                '`' if depth == 0 => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let end = end.expect("an unterminated template literal");
        let name = binding
            .captures_iter(&js[..start])
            .last()
            .map(|c| c[1].to_owned())
            .unwrap_or_default();
        literals.push((name, js[start + 1..end].to_owned()));
    }
    literals
}

/// Values for a document's interpolations, and the transaction status the
/// answer must then report.
type Run<'a> = (Vec<(&'a str, String)>, Option<&'a str>);

/// Fills a template's `${...}` the way o1js fills them, from `values` (by the
/// interpolated expression); an expression not there fails the test.
fn fill(name: &str, template: &str, values: &[(&str, String)]) -> String {
    let interpolation = regex::Regex::new(r"\$\{([^}]*)\}").unwrap();
    interpolation
        .replace_all(template, |c: &regex::Captures| {
            match values.iter().find(|(expression, _)| *expression == &c[1]) {
                Some((_, value)) => value.clone(),
                None => panic!(
                    "o1js's {name} interpolates `${{{}}}`: fill it as the client does",
                    &c[1]
                ),
            }
        })
        .into_owned()
}

/// The root fields a GraphQL document selects, and whether it is a query.
fn root_fields(name: &str, document: &str) -> (bool, Vec<String>) {
    let parsed = apollo_compiler::ast::Document::parse(document, name)
        .unwrap_or_else(|e| panic!("o1js's {name} is not GraphQL once filled: {e}\n{document}"));
    let mut fields = Vec::new();
    let mut query = true;
    for definition in &parsed.definitions {
        if let apollo_compiler::ast::Definition::OperationDefinition(operation) = definition {
            query &= operation.operation_type == apollo_compiler::ast::OperationType::Query;
            for selection in &operation.selection_set {
                if let apollo_compiler::ast::Selection::Field(field) = selection {
                    fields.push(field.name.to_string());
                }
            }
        }
    }
    (query, fields)
}

/// Every daemon query of the pinned `o1js` package's client (the GraphQL
/// documents of its `dist/node/lib/mina/v1/graphql.js`: accounts, the network's
/// last block and current slot, genesis constants, the zkApp commands of the
/// newest blocks, transaction status), with its interpolations filled as the
/// client fills them, answered by a simulated node without errors and with
/// values o1js parses. Its archive-node queries (`events`, `actions`) and its
/// mutation (`sendZkapp`) are outside the simulator.
#[tokio::test]
async fn the_simulator_answers_every_daemon_query_the_o1js_client_sends() {
    let path = Tools::locate().unwrap().o1js_queries().unwrap();
    let js = std::fs::read_to_string(&path).unwrap();
    let mina = parse_lenient(kco::schema::MINA_SDL, "mina.graphql");
    let daemon_fields = &mina.get_object("query").unwrap().fields;

    let (_sim, node) = simulated_node().await;
    let http = support::fixtures::http_client();
    let url = format!("http://{node}/graphql");
    let ask = |query: String| {
        let http = http.clone();
        let url = url.clone();
        async move {
            // The body o1js posts.
            let body = serde_json::json!({"operationName": null, "query": query, "variables": {}});
            let answer: serde_json::Value = http
                .post(&url)
                .json(&body)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            answer
        }
    };

    // What o1js would know from elsewhere: a zkApp command of a recent block and
    // the zkApp it updates, a pending one, an ordinary account.
    let known = ask(
        "{ bestChain(maxLength: 20) { transactions { zkappCommands { id zkappCommand { \
           accountUpdates { body { publicKey } } } } } } pooledZkappCommands { id } }"
            .to_owned(),
    )
    .await;
    assert!(known.get("errors").is_none(), "{known}");
    let included = known["data"]["bestChain"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|b| {
            b["transactions"]["zkappCommands"]
                .as_array()
                .unwrap()
                .clone()
        })
        .next()
        .expect("no zkApp command in the newest 20 blocks");
    let included_id = included["id"].as_str().unwrap().to_owned();
    let zkapp = included["zkappCommand"]["accountUpdates"][0]["body"]["publicKey"]
        .as_str()
        .unwrap()
        .to_owned();
    let pending_id = known["data"]["pooledZkappCommands"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let ordinary = kco::simulator::public_key("an ordinary account");
    let token = kco::simulator::DEFAULT_TOKEN.to_owned();

    let mut served = Vec::new();
    let mut archive = Vec::new();
    let mut mutations = Vec::new();
    for (name, template) in template_literals(&js) {
        let text = template.trim_start();
        if text.starts_with("mutation") {
            mutations.push(name);
            continue;
        }
        if !(text.starts_with('{') || text.starts_with("query")) {
            continue; // a fragment of a larger document
        }
        // Each way the client fills the document, and what it must then answer.
        let runs: Vec<Run> = match name.as_str() {
            "accountQuery" => vec![
                (
                    vec![("publicKey", zkapp.clone()), ("tokenId", token.clone())],
                    None,
                ),
                (
                    vec![("publicKey", ordinary.clone()), ("tokenId", token.clone())],
                    None,
                ),
            ],
            "transactionStatusQuery" => vec![
                (vec![("txId", included_id.clone())], Some("INCLUDED")),
                (vec![("txId", pending_id.clone())], Some("PENDING")),
            ],
            // checkZkappTransaction's default number of blocks.
            "lastBlockQueryFailureCheck" => vec![(vec![("length", "20".to_owned())], None)],
            // The archive's: filled to be classified, never sent.
            _ => vec![(
                vec![(
                    "input",
                    format!("address: \"{ordinary}\", tokenId: \"{token}\""),
                )],
                None,
            )],
        };
        for (values, status) in runs {
            let query = fill(&name, &template, &values);
            let (is_query, roots) = root_fields(&name, &query);
            assert!(is_query, "{name} is neither a query nor a mutation");
            if roots.iter().all(|r| r == "events" || r == "actions") {
                archive.push(name.clone());
                break;
            }
            for root in &roots {
                assert!(
                    daemon_fields.contains_key(root.as_str()),
                    "o1js's {name} asks for {root}, which is neither the daemon's nor the archive's"
                );
            }
            let answer = ask(query.clone()).await;
            assert!(answer.get("errors").is_none(), "{name}: {answer}\n{query}");
            let data = &answer["data"];
            assert!(
                data.as_object().is_some_and(|d| !d.is_empty()),
                "{name}: {answer}"
            );
            let problems = support::mina::check_answer(data, &how_clients_read);
            assert!(problems.is_empty(), "{name}: {problems:#?}\n{answer}");
            if let Some(status) = status {
                assert_eq!(data["transactionStatus"], status, "{name}: {query}");
            }
            served.push(name.clone());
        }
    }
    served.dedup();
    for expected in [
        "accountQuery",
        "currentSlotQuery",
        "genesisConstantsQuery",
        "lastBlockQuery",
        "lastBlockQueryFailureCheck",
        "transactionStatusQuery",
    ] {
        assert!(
            served.iter().any(|s| s == expected),
            "o1js's {expected} was not found in {} or not sent: {served:?}",
            path.display()
        );
    }
    assert_eq!(
        archive,
        ["getEventsQuery", "getActionsQuery"],
        "the archive's queries"
    );
    assert_eq!(mutations, ["sendZkappQuery"]);

    // o1js reads the zkApp's state, and checkZkappTransaction finds its commands.
    let account = ask(fill(
        "accountQuery",
        &template_literals(&js)
            .into_iter()
            .find(|(n, _)| n == "accountQuery")
            .unwrap()
            .1,
        &[("publicKey", zkapp.clone()), ("tokenId", token.clone())],
    ))
    .await;
    assert_eq!(
        account["data"]["account"]["zkappState"]
            .as_array()
            .map(Vec::len),
        Some(8),
        "{account}"
    );
}

/// A simulator with one node on Mina's GraphQL port (the simulator serves
/// while it is held).
async fn simulated_node() -> (kco::simulator::Simulator, std::net::SocketAddr) {
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
    (sim, node)
}
