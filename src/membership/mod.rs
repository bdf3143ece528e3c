//! Membership plane (sans-IO): SWIM failure detection, incarnations, the health thresholds of
//! `gossip.config`, cluster health and the member table. Filled by the membership issue.
