//! Discovery: the `Discovery` trait and one backend per cargo feature (`kubernetes`, `consul`, `etcd`, `dns`,
//! `udp`, `mdns`) plus static peers. Filled by the discovery issue.
