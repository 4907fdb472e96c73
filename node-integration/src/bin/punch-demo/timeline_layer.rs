//! A tracing layer that copies punch's own milestones (offer received, first dial, session
//! established) onto the demo's timeline. punch reports them only as tracing events, inside
//! a `punch-client` span whose `id` field is the client's short identity; the layer finds
//! that span and names the client through [`Timeline::who`].

use std::collections::HashSet;
use std::fmt::{Debug, Write as _};
use std::sync::{Arc, Mutex};

use punch_node::demo::Timeline;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// The client identity a `punch-client` span carries.
struct ClientId(String);

pub struct TimelineLayer {
    timeline: Arc<Timeline>,
    /// Who already had a dial recorded (punch logs every redial; one line is enough).
    dialed: Mutex<HashSet<String>>,
}

impl TimelineLayer {
    pub fn new(timeline: Arc<Timeline>) -> Self {
        Self {
            timeline,
            dialed: Mutex::default(),
        }
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    id: Option<String>,
    rest: String,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "id" => self.id = Some(format!("{value:?}")),
            name => {
                let _ = write!(self.rest, " {name}={value:?}");
            }
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.record_debug(field, &format_args!("{value}"));
    }
}

impl<S> Layer<S> for TimelineLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().name() != "punch-client" {
            return;
        }
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let (Some(span), Some(client)) = (ctx.span(id), fields.id) {
            span.extensions_mut().insert(ClientId(client));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if !event.metadata().target().starts_with("punch::") {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let label = match fields.message.as_str() {
            "offer received" => "punch: offer received",
            "dial" => "punch: first dial",
            "session established" => "punch: session established",
            _ => return,
        };
        let Some(client) = ctx.event_scope(event).and_then(|scope| {
            scope
                .from_root()
                .find_map(|span| span.extensions().get::<ClientId>().map(|c| c.0.clone()))
        }) else {
            return;
        };
        let Some(who) = self.timeline.who(&client) else {
            return;
        };
        if fields.message == "dial"
            && !self
                .dialed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(who.clone())
        {
            return;
        }
        self.timeline
            .record(&who, format!("{label} ({})", fields.rest.trim()));
    }
}
