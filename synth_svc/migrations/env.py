from synth_svc.models import Base
from voiceslot.db import run_alembic_env

run_alembic_env(Base.metadata)
