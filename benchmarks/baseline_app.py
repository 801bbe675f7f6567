"""The load benchmark's baseline: a trivial FastAPI endpoint reading one JSON row by primary key."""

from __future__ import annotations

import os

from fastapi import FastAPI, Response
from sqlalchemy import create_engine, text

engine = create_engine(os.environ["SHAREDCARE_DATABASE_URL"], pool_size=20, max_overflow=20)
app = FastAPI()


@app.get("/row/{pk}")
def row(pk: int) -> Response:
    with engine.connect() as conn:
        content = conn.execute(text("SELECT content FROM resource WHERE pk = :pk"), {"pk": pk}).scalar_one()
    return Response(content, media_type="application/fhir+json")
