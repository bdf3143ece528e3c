//! Fuzzes `import`'s line parser: any input gives values or one error naming a line, never a panic; the values
//! merge into a snapshot that encodes, exports and imports back unchanged (a repeat import is idempotent).
#![no_main]

use bifrost_cluster::storage::{exchange, format};
use libfuzzer_sys::fuzz_target;

const NOW: u64 = 1_795_514_400_000;

fuzz_target!(|data: &[u8]| {
    let origin = exchange::import_origin("fuzz");
    let Ok(values) = exchange::parse(data, origin, NOW, 64) else {
        return;
    };
    let (body, _) = exchange::merge(None, values.clone());
    let (again, report) = exchange::merge(Some(body.clone()), values);
    assert_eq!(
        report.added + report.raised,
        0,
        "a repeat import changed values"
    );
    assert_eq!(again, body);
    let bytes = format::encode(&body).expect("a merged body encodes");
    let archived = format::decode(&bytes).expect("an encoded body decodes");
    let mut lines = Vec::new();
    exchange::export(archived, &mut lines).expect("export to memory");
    let back = exchange::parse(lines.as_slice(), origin, NOW, 64).expect("an export parses");
    let (round, report) = exchange::merge(Some(body.clone()), back);
    assert_eq!(
        report.added + report.raised,
        0,
        "an export imported back changed values"
    );
    assert_eq!(round, body);
});
