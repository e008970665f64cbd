"""Generated protobuf messages of the Open Inference Protocol over gRPC (grpc_predict_v2.proto)."""
