//! GraphQL schemas that KCO checks TargetApp queries against: the embedded Mina
//! daemon schema, and `kco schema import`, which turns an introspection result
//! into the SDL form KCO embeds.

pub mod health;

use std::fmt;

use cynic_introspection::query::{FieldType, InputValue, IntrospectedSchema, TypeKind};

/// The Mina daemon's schema, produced by `kco schema import` from the introspection
/// file of the `mina-sdk` package (see `tests/schema.rs`, which fails on drift).
pub const MINA_SDL: &str = include_str!("mina.graphql");

/// The type an unrecoverable (truncated) part of a type reference is completed with.
const TRUNCATED_COMPLETION: &str = "String";

/// An SDL document and what had to be repaired to produce it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    /// The schema as SDL: names and types only, no descriptions or deprecations.
    pub sdl: String,
    /// One entry per repair, in the order found.
    pub warnings: Vec<ImportWarning>,
}

/// A repair made while importing an introspection result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportWarning {
    /// A wrapping type (`LIST`/`NON_NULL`) had no `ofType`: the introspection query
    /// that produced the file did not recurse deep enough.
    Truncated {
        /// `Type.field` or `Type.field(arg)`.
        location: String,
        /// The type as completed, e.g. `[[String]!]!`.
        completed_as: String,
    },
    /// A type name appeared more than once; the first definition is kept.
    DuplicateType {
        /// The repeated type name.
        name: String,
    },
}

impl fmt::Display for ImportWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated {
                location,
                completed_as,
            } => write!(
                f,
                "the type of {location} is truncated in the introspection result \
                 (a list with no item type); completed as {completed_as}"
            ),
            Self::DuplicateType { name } => {
                write!(
                    f,
                    "type {name} is defined more than once; the first definition is kept"
                )
            }
        }
    }
}

/// Why an introspection result could not be imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The input is not JSON at all.
    #[error("the input is not valid JSON: {0}")]
    Json(#[source] serde_json::Error),
    /// JSON, but without a `__schema` object where an introspection result has one.
    #[error(
        "no `__schema` object found: expected an introspection result shaped {{\"data\": {{\"__schema\": ...}}}} or {{\"__schema\": ...}}"
    )]
    NoSchema,
    /// A `__schema` object whose contents do not have the introspection shape.
    #[error("the `__schema` object is not an introspection result: {0}")]
    Shape(#[source] serde_json::Error),
    /// The introspection result is shaped right but does not describe a schema.
    #[error("the introspection result does not describe a usable schema: {0}")]
    Schema(#[source] cynic_introspection::SchemaError),
}

/// Converts an introspection result (JSON) into SDL, repairing the quirks of
/// real-world files (truncated list types, repeated types) and reporting each repair.
pub fn import_introspection(json: &str) -> Result<Imported, ImportError> {
    let mut value: serde_json::Value = serde_json::from_str(json).map_err(ImportError::Json)?;
    let schema = match value.pointer_mut("/data/__schema") {
        Some(s) => s,
        None => value.get_mut("__schema").ok_or(ImportError::NoSchema)?,
    };
    let object = schema.as_object_mut().ok_or(ImportError::NoSchema)?;
    // Older servers' results omit `directives`; none of KCO's checks need them.
    object
        .entry("directives")
        .or_insert_with(|| serde_json::Value::Array(Vec::new()));
    let mut introspected: IntrospectedSchema =
        serde_json::from_value(schema.take()).map_err(ImportError::Shape)?;

    let mut warnings = Vec::new();
    let mut seen = std::collections::HashSet::new();
    introspected.types.retain(|ty| match &ty.name {
        Some(name) if !seen.insert(name.clone()) => {
            warnings.push(ImportWarning::DuplicateType { name: name.clone() });
            false
        }
        _ => true,
    });
    for ty in &mut introspected.types {
        // Some servers (Mina among them) also list `fields` on input objects:
        // keep only the list that the type's kind defines.
        if matches!(ty.kind, TypeKind::InputObject) {
            ty.fields = None;
        } else {
            ty.input_fields = None;
        }
        ty.description = None;
        ty.specified_by_url = None;
        let owner = ty.name.clone().unwrap_or_default();
        for field in ty.fields.iter_mut().flatten() {
            field.description = None;
            field.is_deprecated = false;
            field.deprecation_reason = None;
            let location = format!("{owner}.{}", field.name);
            repair(&mut field.ty, &location, &mut warnings);
            strip_inputs(&mut field.args, &location, &mut warnings);
        }
        strip_inputs(
            ty.input_fields.as_deref_mut().unwrap_or_default(),
            &owner,
            &mut warnings,
        );
        for value in ty.enum_values.iter_mut().flatten() {
            value.description = None;
            value.is_deprecated = false;
            value.deprecation_reason = None;
        }
    }
    for directive in &mut introspected.directives {
        directive.description = None;
        let location = format!("@{}", directive.name);
        strip_inputs(&mut directive.args, &location, &mut warnings);
    }

    let schema =
        cynic_introspection::Schema::try_from(introspected).map_err(ImportError::Schema)?;
    Ok(Imported {
        sdl: schema.to_sdl(),
        warnings,
    })
}

fn strip_inputs(inputs: &mut [InputValue], owner: &str, warnings: &mut Vec<ImportWarning>) {
    for input in inputs {
        input.description = None;
        input.is_deprecated = false;
        input.deprecation_reason = None;
        let location = if owner.contains('.') || owner.starts_with('@') {
            format!("{owner}({})", input.name)
        } else {
            format!("{owner}.{}", input.name)
        };
        repair(&mut input.ty, &location, warnings);
    }
}

/// Completes a wrapping type that lost its `ofType` with a nullable scalar.
fn repair(ty: &mut FieldType, location: &str, warnings: &mut Vec<ImportWarning>) {
    if !complete(ty) {
        return;
    }
    warnings.push(ImportWarning::Truncated {
        location: location.to_owned(),
        completed_as: render(ty),
    });
}

fn complete(ty: &mut FieldType) -> bool {
    if !matches!(ty.kind, TypeKind::List | TypeKind::NonNull) {
        return false;
    }
    match &mut ty.of_type {
        Some(inner) => complete(inner),
        None => {
            ty.of_type = Some(Box::new(FieldType {
                kind: TypeKind::Scalar,
                name: Some(TRUNCATED_COMPLETION.to_owned()),
                of_type: None,
            }));
            true
        }
    }
}

fn render(ty: &FieldType) -> String {
    match (&ty.kind, &ty.of_type) {
        (TypeKind::List, Some(inner)) => format!("[{}]", render(inner)),
        (TypeKind::NonNull, Some(inner)) => format!("{}!", render(inner)),
        _ => ty.name.clone().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests;
