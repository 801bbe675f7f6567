"""The electronic vaccination record (CVE): immunizations, the CDSi forecaster, recommendations, reminders."""
