"""The admin listener's one web layer: tokens and roles, the JSON API's helpers and
errors, and the pages both UIs (review queue, incidents) share: one template
environment and layout, one session and CSRF implementation, one login."""
