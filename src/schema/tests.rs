use super::*;

/// A small introspection result with the two quirks of the published Mina file:
/// a truncated list type and a type listed twice; also no `directives` key.
fn fixture() -> String {
    serde_json::json!({"data": {"__schema": {
        "queryType": {"name": "query"},
        "mutationType": null,
        "subscriptionType": null,
        "types": [
            {"kind": "OBJECT", "name": "query", "description": "root", "fields": [
                {"name": "daemonStatus", "description": "status", "args": [], "isDeprecated": false,
                 "deprecationReason": null,
                 "type": {"kind": "NON_NULL", "name": null, "ofType": {"kind": "OBJECT", "name": "DaemonStatus", "ofType": null}}},
                {"name": "events", "description": null, "isDeprecated": true, "deprecationReason": "gone",
                 "args": [{"name": "first", "description": "how many", "type": {"kind": "SCALAR", "name": "Int", "ofType": null}, "defaultValue": null}],
                 "type": {"kind": "NON_NULL", "name": null, "ofType": {"kind": "LIST", "name": null,
                          "ofType": {"kind": "NON_NULL", "name": null, "ofType": {"kind": "LIST", "name": null}}}}}
            ], "inputFields": null, "interfaces": [], "enumValues": null, "possibleTypes": null},
            {"kind": "OBJECT", "name": "DaemonStatus", "description": "The daemon", "fields": [
                {"name": "syncStatus", "description": "sync", "args": [], "isDeprecated": false, "deprecationReason": null,
                 "type": {"kind": "NON_NULL", "name": null, "ofType": {"kind": "ENUM", "name": "SyncStatus", "ofType": null}}}
            ], "inputFields": null, "interfaces": [], "enumValues": null, "possibleTypes": null},
            {"kind": "ENUM", "name": "SyncStatus", "description": "Sync status", "fields": null, "inputFields": null,
             "interfaces": null, "possibleTypes": null, "enumValues": [
                {"name": "SYNCED", "description": "synced", "isDeprecated": false, "deprecationReason": null},
                {"name": "OFFLINE", "description": null, "isDeprecated": false, "deprecationReason": null}]},
            {"kind": "ENUM", "name": "SyncStatus", "description": "again", "fields": null, "inputFields": null,
             "interfaces": null, "possibleTypes": null, "enumValues": []},
            {"kind": "SCALAR", "name": "Int", "description": "builtin", "fields": null, "inputFields": null,
             "interfaces": null, "enumValues": null, "possibleTypes": null}
        ]
    }}})
    .to_string()
}

#[test]
fn import_strips_text_and_repairs_quirks() {
    let imported = import_introspection(&fixture()).unwrap();
    let sdl = &imported.sdl;
    assert!(sdl.contains("daemonStatus: DaemonStatus!"), "{sdl}");
    assert!(sdl.contains("events(first: Int): [[String]!]!"), "{sdl}");
    assert!(
        sdl.contains("enum SyncStatus {\n  SYNCED\n  OFFLINE\n}"),
        "{sdl}"
    );
    for text in [
        "root",
        "The daemon",
        "Sync status",
        "how many",
        "gone",
        "again",
        "@deprecated",
    ] {
        assert!(
            !sdl.contains(text),
            "description text {text:?} leaked into {sdl}"
        );
    }
    assert_eq!(
        imported.warnings,
        vec![
            ImportWarning::DuplicateType {
                name: "SyncStatus".into()
            },
            ImportWarning::Truncated {
                location: "query.events".into(),
                completed_as: "[[String]!]!".into()
            },
        ]
    );
    assert!(imported.warnings[1].to_string().contains("query.events"));
}

#[test]
fn accepts_a_bare_schema_object() {
    let value: serde_json::Value = serde_json::from_str(&fixture()).unwrap();
    let bare = serde_json::json!({"__schema": value["data"]["__schema"]});
    let imported = import_introspection(&bare.to_string()).unwrap();
    assert!(imported.sdl.contains("type DaemonStatus"));
}

#[test]
fn bad_input_gets_a_clear_error() {
    assert!(matches!(
        import_introspection("{not json"),
        Err(ImportError::Json(_))
    ));
    assert!(matches!(
        import_introspection("{\"data\": {}}"),
        Err(ImportError::NoSchema)
    ));
    assert!(matches!(
        import_introspection("[1, 2]"),
        Err(ImportError::NoSchema)
    ));
    let err = import_introspection("{\"__schema\": {\"types\": 3}}").unwrap_err();
    assert!(matches!(err, ImportError::Shape(_)), "{err}");
}

#[test]
fn embedded_mina_schema_has_the_monitoring_fields() {
    assert!(MINA_SDL.contains("type DaemonStatus {"));
    assert!(MINA_SDL.contains("syncStatus: SyncStatus!"));
    assert!(
        !MINA_SDL.contains("\"\"\""),
        "descriptions must not be embedded"
    );
}
