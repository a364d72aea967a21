# MLflow tracking server backed by PostgreSQL, artifacts on a shared volume.
FROM python:3.11-slim
RUN pip install --no-cache-dir "mlflow>=3.17,<4" "psycopg2-binary>=2.9"
EXPOSE 5000
CMD ["sh", "-c", "mlflow server --host 0.0.0.0 --port 5000 --backend-store-uri \"$MLFLOW_BACKEND_STORE_URI\" --artifacts-destination /mlartifacts --serve-artifacts"]
