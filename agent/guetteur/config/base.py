"""What every config section shares: unknown keys refused, values frozen; normalised polygons."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class ConfigSection(BaseModel):
    """A mapping of the config file: a key nobody defined is an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


Point = tuple[Annotated[float, Field(ge=0.0, le=1.0)], Annotated[float, Field(ge=0.0, le=1.0)]]
Polygon = Annotated[list[Point], Field(min_length=3)]
