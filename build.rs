//! Registers the embedded Mina schema with cynic, so that KCO's built-in health
//! query is type-checked against it at compile time (`src/schema/health.rs`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=src/schema/mina.graphql");
    cynic_codegen::register_schema("mina")
        .from_sdl_file("src/schema/mina.graphql")?
        .as_default()?;
    Ok(())
}
