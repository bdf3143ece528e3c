//! Every JSON example in `docs/configuration.md` loads, with no warning but the deliberate `insecure_dev` one of the development examples: the user reference cannot drift from
//! the parser.

use bifrost_cluster::config::{ConfigWarning, load_from_str};

#[test]
fn every_json_example_in_the_configuration_reference_loads() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut examples = 0;
    let mut rest = text.as_str();
    while let Some(start) = rest.find("```json\n") {
        let body = &rest[start + "```json\n".len()..];
        let end = body
            .find("\n```")
            .unwrap_or_else(|| panic!("unclosed ```json block in {path}"));
        let example = &body[..end];
        match load_from_str(example) {
            // The development examples use `insecure_dev` on purpose; its warning is the only one allowed.
            Ok(loaded) => assert!(
                loaded
                    .warnings
                    .iter()
                    .all(|w| matches!(w, ConfigWarning::Insecure { .. })),
                "{example}\nwarnings: {:?}",
                loaded.warnings
            ),
            Err(e) => panic!("example does not load:\n{example}\n{e}"),
        }
        examples += 1;
        rest = &body[end..];
    }
    assert!(examples >= 4, "found only {examples} examples");
}
