"""OAuth2 / OpenID Connect authorization server and SMART on FHIR configuration (authlib)."""
