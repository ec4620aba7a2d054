//! The mapping from configuration to router settings.

use culex_broker::BrokerSettings;
use culex_config::Config;

use super::broker_settings;

/// The router's own defaults (used by its tests and embedders) are the configuration's:
/// a default changed on one side only fails here.
#[test]
fn router_defaults_are_the_configuration_defaults() {
    assert_eq!(
        broker_settings(&Config::default()),
        BrokerSettings::default()
    );
}
