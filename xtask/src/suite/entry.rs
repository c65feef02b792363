//! An entry of the suite, by how it runs.

use anyhow::Result;

use crate::platform::spec::{Outcome, Platform, RunArgs};

/// One end-to-end check: a run and what its summary must say.
pub struct Case {
    pub name: String,
    pub args: RunArgs,
    pub check: fn(&Outcome) -> Result<()>,
}

/// One entry, registered once in `table::all`.
pub enum Test {
    /// One boot, judged by its check.
    Boot(Case),
    /// A boot as an L2 under KVM on the project's Bochs: the nested entries the filter selects
    /// share one boot of KVM's host.
    Nested(Case),
    /// A test of its own: several boots, a build, a host command.
    Own { name: String, run: Box<dyn Fn() -> Result<()>> },
    /// Cannot run here, and why (an input the clone lacks).
    Unavailable { name: String, why: String },
}

impl Test {
    pub fn name(&self) -> &str {
        match self {
            Test::Boot(c) | Test::Nested(c) => &c.name,
            Test::Own { name, .. } | Test::Unavailable { name, .. } => name,
        }
    }
}

/// A test of its own.
pub fn own(name: impl Into<String>, run: impl Fn() -> Result<()> + 'static) -> Test {
    Test::Own { name: name.into(), run: Box::new(run) }
}

/// A Bochs run of the guests `list` (`--guest`'s syntax) with 4 CPUs.
pub fn bochs_guests(list: &str) -> RunArgs {
    RunArgs { timeout: 300, ..RunArgs::new(Platform::Bochs, 4) }.with_guests(list)
}
