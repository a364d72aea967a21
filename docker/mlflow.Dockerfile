# MLflow tracking server backed by PostgreSQL (psycopg 3), artifacts on a shared volume. The versions
# of MLflow, psycopg and everything they pull in come from the project's lock, as in the Ray image.
FROM python:3.11.11-slim-bookworm
WORKDIR /opt/mlflow
COPY requirements-lock.txt ./
RUN pip install --no-cache-dir -c requirements-lock.txt mlflow "psycopg[binary]"
EXPOSE 5000
CMD ["sh", "-c", "mlflow server --host 0.0.0.0 --port 5000 --backend-store-uri \"$MLFLOW_BACKEND_STORE_URI\" --artifacts-destination /mlartifacts --serve-artifacts"]
