use super::*;
#[test]
fn placeholder_until_recorded() {}
