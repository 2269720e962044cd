//! Warnings for input that kproxy skips instead of programming.

use std::fmt;

use crate::model::NamespacedName;

/// The kind of object a warning is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    /// A core/v1 Service.
    Service,
    /// A discovery.k8s.io/v1 EndpointSlice.
    EndpointSlice,
    /// A core/v1 Node.
    Node,
    /// A networking.k8s.io/v1 ServiceCIDR.
    ServiceCidr,
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ObjectKind::Service => "Service",
            ObjectKind::EndpointSlice => "EndpointSlice",
            ObjectKind::Node => "Node",
            ObjectKind::ServiceCidr => "ServiceCIDR",
        })
    }
}

/// How much of the object a warning cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Skipped {
    /// Nothing of the object is programmed.
    Object,
    /// One Service port (or one EndpointSlice port) is left out; the rest is programmed.
    Port,
    /// One endpoint of a slice is left out.
    Endpoint,
    /// One value of a field (an external IP, a source range, …) is left out, or a default is used.
    Value,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Skipped::Object => "object skipped",
            Skipped::Port => "port skipped",
            Skipped::Endpoint => "endpoint skipped",
            Skipped::Value => "value ignored",
        })
    }
}

/// Input that kproxy could not program as written, and what it did instead.
///
/// Conversion never fails as a whole: one bad port or one bad object is left out, a warning is
/// recorded, and everything else proceeds. The warning names the object (and the field), so an
/// operator can find it; callers log it and count it in a metric.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConversionWarning {
    /// The kind of the offending object.
    pub kind: ObjectKind,
    /// The offending object.
    pub object: NamespacedName,
    /// Which field, e.g. `spec.ports[1]` or `endpoints[3].addresses[0]`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
    /// What was left out because of it.
    pub skipped: Skipped,
}

impl fmt::Display for ConversionWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}: {} ({})",
            self.kind, self.object, self.field, self.reason, self.skipped
        )
    }
}

/// Where conversion reports what it skipped: a plain vector the caller drains and logs.
#[derive(Debug, Default)]
pub struct Warnings {
    items: Vec<ConversionWarning>,
}

impl Warnings {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one warning.
    pub fn push(&mut self, warning: ConversionWarning) {
        self.items.push(warning);
    }

    /// Records a warning about `object` built from its parts.
    pub(crate) fn add(
        &mut self,
        kind: ObjectKind,
        object: &NamespacedName,
        field: impl Into<String>,
        reason: impl Into<String>,
        skipped: Skipped,
    ) {
        self.items.push(ConversionWarning {
            kind,
            object: object.clone(),
            field: field.into(),
            reason: reason.into(),
            skipped,
        });
    }

    /// The warnings recorded so far.
    pub fn as_slice(&self) -> &[ConversionWarning] {
        &self.items
    }

    /// How many warnings are recorded.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether none are recorded.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Takes every recorded warning, leaving the sink empty.
    pub fn drain(&mut self) -> std::vec::Drain<'_, ConversionWarning> {
        self.items.drain(..)
    }
}
