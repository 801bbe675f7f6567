"""Notify: messages to holders (outbox), shown in the portal and sent by a worker."""
