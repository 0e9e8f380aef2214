# syntax=docker/dockerfile:1
# One image for every role of MedicalService; the role is the command (deploy/k8s/):
#   python -m gateway                      the gateway
#   python -m fe_server                    an FE server (MEDSVC_SHARD, MEDSVC_SERVICES)
#   python -m audit_service                audit_service
#   python -m anonymizer serve             the anonymizer API
#   python -m anonymizer schedule          one scheduler pass (the CronJob)
# Every process reads its settings from MEDSVC_* variables (shared/settings.py).
#
#   docker build -t medsvc:0.1.0 .
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The pinned dependencies first, in a layer of their own: a code change does not reinstall them.
COPY pyproject.toml ./
RUN python - <<'PY' > /tmp/requirements.txt && pip install -r /tmp/requirements.txt && rm /tmp/requirements.txt
import tomllib
print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))
PY

# The code runs from /app (python -m finds the packages in the working directory), with its
# SQL migrations beside it. Compiled now: the root filesystem is read-only at run time.
COPY shared ./shared
COPY fe_server ./fe_server
COPY gateway ./gateway
COPY user_service ./user_service
COPY visit_service ./visit_service
COPY audit_service ./audit_service
COPY anonymizer ./anonymizer
RUN python -m compileall -q /app

# The uid the manifests' securityContext names (runAsUser 10001).
RUN groupadd --system --gid 10001 medsvc \
    && useradd --system --uid 10001 --gid medsvc --no-create-home --home-dir /nonexistent medsvc
USER 10001:10001

EXPOSE 8000
ENV MEDSVC_HOST=0.0.0.0 MEDSVC_PORT=8000
CMD ["python", "-m", "gateway"]
